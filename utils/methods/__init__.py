"""Scoring methods: one registry entry per method, each turning saved features into per-image OOD scores.

Sign convention, as everywhere in this repository: **an OOD score is larger for more anomalous inputs**.

A method is a function ``fn(inputs, **hyperparameters) -> {set name: scores}`` registered with
:func:`register_method`, declaring what it needs from :class:`Inputs`:

    logits, penultimate, labels   saved by stage 2 for every set (labels: the train split's classes)
    layers                        the pooled per-layer features of stage 2
    head                          the classifier head (weight, bias) that the penultimate features feed
    odin                          ODIN scores stored by ``save_inter_outputs.py --odin``
    gram                          Gram deviations stored by ``save_inter_outputs.py --gram`` (utils/gram.py)
    nac                           NAC-UE's gradient quantities stored by ``save_inter_outputs.py --nac`` (utils/nac.py)
    nac_stages                    NAC-UE's stage values as its authors compute them (``--nac-stages``, utils/nac_authors.py)
    detectors                     the fitted per-layer detectors' scores (stage 3)
    calibration                   the train images held back from the detectors, and their layer scores

and its hyperparameters as keyword arguments with defaults, with the grid ``--tune`` searches
(:mod:`utils.tuning`). Detection scores every registered method whose needs are met and says which it left out
and why. Everything fitted here is fitted on in-distribution train features; no default looks at OOD data.

The methods live by family, one module each: ``logits`` (MSP, ODIN, Energy, GEN), ``activations`` (ReAct, ASH-S,
DICE, ViM, fDBD, SCALE, NCI, NNGuide), ``distance`` (Mahalanobis, KNN, RMDS), ``multilayer`` (Mahalanobis on
every layer, Gram, NAC-UE) and ``layer_adaptive`` (LA-OOD and its variants); ``blocks`` holds the scores they
compose. Adding a method is one decorated function in its family's module and its test; :data:`TABLE_ORDER`
places it in the tables (a method not listed there follows the listed ones).

Where pytorch-ood 0.4 implements a method, tests/test_methods_reference.py checks that the scores here
equal its scores on the same features (to 1e-5, or the same ranking where a score is defined up to a
monotone map).
"""
from typing import List

from . import activations, distance, logits, multilayer  # noqa: F401  (registering)
from .base import (HELD, NEEDS, Inputs, Method, Rows, _METHODS, get_method, is_layer_adaptive, register, register_method,
                   score_methods)
from .base import standardise_on, take
from .blocks import KNN, Mahalanobis, ViM, ash_s, dice_weight, energy, gen, linear, msp, react_threshold, vim_dim
from .layer_adaptive import PAIRED, TAIL_BASES, VALIDATED, register_paired_tail, register_tail, register_validated_tail

for _base in TAIL_BASES:
    register_tail(_base)
register_validated_tail()
register_paired_tail()

# The rows of every table, in this order: LA-OOD and the variants that read only the detectors, then the
# post-hoc baselines roughly by year, then the tail rule over each of its bases.
TABLE_ORDER = ("LA-OOD", "LA-OOD (calibrated)", "early exit", "MSP", "ODIN", "Energy", "GEN", "ReAct", "ASH-S",
               "DICE", "ViM", "Mahalanobis", "Mahalanobis (all layers)", "Gram", "KNN", "fDBD", "RMDS", "SCALE",
               "NCI", "NAC-UE (pytorch-ood)", "NAC-UE (authors)", "NNGuide", *(f"LA-OOD tail + {b}" for b in TAIL_BASES),
               VALIDATED, PAIRED)


def list_methods() -> List[str]:
    """Every registered method's name, in table order."""
    return [m for m in TABLE_ORDER if m in _METHODS] + [m for m in _METHODS if m not in TABLE_ORDER]


__all__ = ["HELD", "NEEDS", "TABLE_ORDER", "Inputs", "Method", "Rows", "get_method", "is_layer_adaptive", "list_methods", "register",
           "register_method", "register_tail", "score_methods", "standardise_on", "take", "KNN", "Mahalanobis",
           "ViM", "ash_s", "dice_weight", "energy", "gen", "linear", "msp", "react_threshold", "vim_dim"]
