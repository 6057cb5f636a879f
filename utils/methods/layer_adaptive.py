"""LA-OOD and its layer-adaptive variants: every method here reads the fitted per-layer detectors' scores."""
from typing import Sequence

import numpy as np

from ..detectors import early_exit
from .base import Inputs, Method, get_method, register, register_method, standardise_on


@register_method("LA-OOD", ["detectors"], "Wang et al., PAKDD 2022")
def _laood(inp: Inputs):
    return {n: s.max(1) for n, s in inp.layer_scores.items()}


@register_method("LA-OOD (calibrated)", ["detectors", "calibration"], "this repository")
def _laood_calibrated(inp: Inputs):
    return {n: inp.calibration.max_z(s) for n, s in inp.layer_scores.items()}


@register_method("early exit", ["detectors", "calibration"], "ES-OOD (2024), as early_exit describes")
def _early_exit(inp: Inputs):
    return {n: early_exit(s, inp.calibration, inp.exit_threshold, inp.exit_k)[0]
            for n, s in inp.layer_scores.items()}


def register_tail(base: str) -> Method:
    """Register ``LA-OOD tail + base``: the ``base`` score standardised on the train images held back from the
    detectors, plus the largest excess of any layer's standardised score beyond that layer's in-distribution
    99th percentile (:meth:`Calibration.tail_excess`). ``base`` is fitted on the other train images, so the
    held-back ones are unseen by it as by the detectors. The rule and its constants (0.99, standardisation on
    the held-back images) were fixed with the Energy variant before any of the other bases was measured and
    are not searched; the row's hyperparameters are its base's, with the base's grid."""
    base_method = get_method(base)

    def fn(inp: Inputs, **values):
        held = np.asarray(inp.calibration.held)
        kept = np.setdiff1d(np.arange(len(inp.train["logits"])), held, assume_unique=True)
        z = standardise_on(base_method.score(inp.fitted_on(kept, held), **values))
        return {n: z[n] + inp.calibration.tail_excess(s) for n, s in inp.layer_scores.items()}
    return register(Method(f"LA-OOD tail + {base}", fn, base_method.needs | {"detectors", "calibration"},
                           "this repository", dict(base_method.defaults), dict(base_method.grid),
                           base_method.grid_source))


TAIL_BASES: Sequence[str] = ("Energy", "ViM", "KNN", "ReAct")
