"""Methods on the logits alone (and ODIN, whose perturbed logits stage 2 computes)."""
import numpy as np

from .base import Inputs, register_method
from .blocks import energy, gen, msp

TEMPERATURES = (1, 10, 100, 1000)        # OpenOOD v1.5's Energy sweep


@register_method("MSP", ["logits"], "Hendrycks and Gimpel, ICLR 2017")
def _msp(inp: Inputs):
    return inp.each(lambda f: msp(f["logits"]))


@register_method("ODIN", ["odin"], "Liang et al., ICLR 2018; T = 1000, eps = 0.0014, computed in stage 2 "
                 "(its grid would need a backward pass per point: not searched)")
def _odin(inp: Inputs):
    return inp.each(lambda f: f["odin"])


@register_method("Energy", ["logits"], "Liu et al., NeurIPS 2020", grid={"temperature": TEMPERATURES},
                 grid_source="OpenOOD v1.5 (ebo)")
def _energy(inp: Inputs, temperature=1.0):
    return inp.each(lambda f: energy(f["logits"], temperature))


def _gen_m(inp: Inputs):
    """OpenOOD's M values, those at or above the number of classes taken once (they keep every class)."""
    classes = np.asarray(inp.train["logits"]).shape[1]
    return sorted({min(m, classes) for m in (10, 50, 100, 200, 500, 1000)})


@register_method("GEN", ["logits"], "Liu et al., CVPR 2023",
                 grid={"gamma": (0.01, 0.1, 0.5, 1, 2, 5, 10), "m": _gen_m}, grid_source="OpenOOD v1.5")
def _gen(inp: Inputs, gamma=0.1, m=10):
    return inp.each(lambda f: gen(f["logits"], gamma, m))
