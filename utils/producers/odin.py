"""ODIN's scores (Liang et al., ICLR 2018; T = 1000, eps = 0.0014), for the evaluated sets: they need input
gradients, so stage 2 computes them from the network (utils/odin.py)."""
import numpy as np

from ..io import load_array
from ..odin import odin as odin_scores
from ..paths import ODIN
from .base import Producer, register_producer


@register_producer
class OdinProducer(Producer):
    name = "odin"
    help = "also store ODIN baseline scores (T=1000, eps=0.0014; about 3x the forward cost)"
    settings_when_off = {"odin": False}

    def applies(self, set_name):
        return set_name != "train"          # ODIN scores only matter for the evaluated sets

    def compute(self, ctx, images, labels, out, fused):
        np.save(out / ODIN, odin_scores(ctx.model, images, ctx.device, batch_size=ctx.batch_size,
                                        progress=f"{ctx.name} ODIN"))

    def load(self, d, manifest, out, rebuild):
        if (d / ODIN).exists():
            out["odin"] = load_array(d / ODIN, rebuild)
