"""Methods that edit the penultimate activations or the classifier head and score the result (and the other
head-based scores of the field's 2023-2025 leaders). pytorch-ood 0.4's implementations are called where they fit:
its detectors' ``fit_features`` / ``predict_features`` on the saved penultimate features and head, in chunks."""
import numpy as np
import torch

from ..splits import held_split
from .base import Inputs, register_method
from .blocks import ViM, _chunked, _head_module, _tensor, ash_s, dice_weight, energy, linear, react_threshold

PERCENTILES = (65, 70, 75, 80, 85, 90, 95)    # OpenOOD v1.5's ASH and SCALE sweeps


@register_method("ReAct", ["penultimate", "head"], "Sun et al., NeurIPS 2021; clipped at a percentile of the "
                 "train activations", grid={"percentile": (85, 90, 95, 99)}, grid_source="OpenOOD v1.5")
def _react(inp: Inputs, percentile=90):
    c = react_threshold(inp.train["penultimate"], percentile)
    return inp.each(lambda f: energy(linear(np.minimum(f["penultimate"], c), inp.head)))


@register_method("ASH-S", ["penultimate", "head"], "Djurisic et al., ICLR 2023; pruning percentile",
                 grid={"percentile": PERCENTILES}, grid_source="OpenOOD v1.5")
def _ash(inp: Inputs, percentile=90):
    return inp.each(lambda f: energy(linear(ash_s(f["penultimate"], percentile), inp.head)))


@register_method("DICE", ["penultimate", "head"], "Sun and Li, ECCV 2022; sparsity p",
                 grid={"p": (10, 30, 50, 70, 90)}, grid_source="OpenOOD (dice, its wider sweep)")
def _dice(inp: Inputs, p=90):
    sparse = (dice_weight(inp.train["penultimate"], inp.head, p), inp.head[1])
    return inp.each(lambda f: energy(linear(f["penultimate"], sparse)))


def _vim_dims(inp: Inputs):
    """OpenOOD's 256 and 1000 where they are below the feature width, and a quarter, half and three quarters
    of the width (CIFAR backbones here have 64 to 512 features)."""
    width = np.asarray(inp.train["penultimate"]).shape[1]
    return sorted({d for d in (256, 1000, width // 4, width // 2, 3 * width // 4) if 0 < d < width})


@register_method("ViM", ["penultimate", "head"], "Wang et al., CVPR 2022; dim None: the paper's subspace rule",
                 grid={"dim": _vim_dims}, grid_source="OpenOOD v1.5 where it fits the width")
def _vim(inp: Inputs, dim=None):
    if dim is not None and dim >= np.asarray(inp.train["penultimate"]).shape[1]:
        raise ValueError(f"ViM: dim {dim} must be below the feature width")
    vim = ViM(inp.head, dim).fit(inp.train["penultimate"])
    return inp.each(lambda f: vim.score(f["penultimate"]))


@register_method("fDBD", ["penultimate", "head"], "Liu and Qin, ICML 2024; hyperparameter-free")
def _fdbd(inp: Inputs):
    from pytorch_ood.detector import fDBD
    det = fDBD(None, _head_module(inp.head)).fit_features(_tensor(inp.train["penultimate"]))
    return inp.each(lambda f: _chunked(det.predict_features, f["penultimate"]))


@register_method("SCALE", ["penultimate", "head"], "Xu et al., ICLR 2024; percentile (85: OpenOOD's CIFAR default)",
                 grid={"percentile": PERCENTILES}, grid_source="OpenOOD v1.5")
def _scale(inp: Inputs, percentile=85):
    from pytorch_ood.detector.scale import scale
    scaled = lambda f: scale(_tensor(f["penultimate"], torch.float64)[:, :, None, None],  # noqa: E731
                             percentile / 100.0).flatten(1).numpy()
    return inp.each(lambda f: energy(linear(scaled(f), inp.head)))


@register_method("NCI", ["penultimate", "head"], "Liu and Qin, CVPR 2025; alpha 0 by default (no norm term: its "
                 "weight is tuned on OOD data in the paper)", grid={"alpha": (0.0, 0.0001, 0.001, 0.01, 0.1)},
                 grid_source="OpenOOD v1.5, and 0")
def _nci(inp: Inputs, alpha=0.0):
    from pytorch_ood.detector import NCI
    det = NCI(None, _head_module(inp.head), alpha=alpha).fit_features(_tensor(inp.train["penultimate"]))
    return inp.each(lambda f: _chunked(det.predict_features, f["penultimate"]))


NNGUIDE_BANK = 0.01   # a seeded 1% of the train features as the bank (as OpenOOD)


def _bank(inp: Inputs) -> np.ndarray:
    n = len(inp.train["penultimate"])
    return held_split(n, max(100, int(NNGUIDE_BANK * n)), inp.seed)[0]


@register_method("NNGuide", ["penultimate", "head", "labels"], "Park et al., ICCV 2023; bank 1% of train",
                 grid={"k": lambda inp: [k for k in (10, 50, 100, 200, 500) if k <= len(_bank(inp))]},
                 grid_source="OpenOOD's K = 100 and the values around it that the bank holds")
def _nnguide(inp: Inputs, k=100):
    from pytorch_ood.detector import NNGuide
    bank = _bank(inp)
    det = NNGuide(None, _head_module(inp.head), k=min(k, len(bank))).fit_features(
        _tensor(inp.train["penultimate"][bank]), torch.as_tensor(np.asarray(inp.train["labels"])[bank]))
    return inp.each(lambda f: _chunked(det.predict_features, f["penultimate"]))
