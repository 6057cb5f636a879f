"""Calibration of the per-layer scores on held-back in-distribution images, and early exit."""
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.stats import norm

from ..splits import held_split as calibration_split  # noqa: F401  (the seeded (held, kept) train indices)

TAIL_LEVEL = 0.99   # the in-distribution quantile beyond which a layer's score counts as evidence


@dataclass
class Calibration:
    """Per-layer mean and spread of the OOD scores of in-distribution images the detectors never saw
    (the train indices ``held``), and the ``TAIL_LEVEL`` quantile of their standardised scores (``tail``,
    for :meth:`tail_excess`). Saved and loaded by ``utils.fitting``."""
    mean: np.ndarray                   # (L,)
    std: np.ndarray                    # (L,)
    tail: Optional[np.ndarray] = None  # (L,)
    held: Optional[np.ndarray] = None  # sorted train indices held back from the detectors

    @classmethod
    def fit(cls, layer_scores: np.ndarray, tail_level: float = TAIL_LEVEL,
            held: Optional[np.ndarray] = None) -> "Calibration":
        std = layer_scores.std(axis=0)
        cal = cls(layer_scores.mean(axis=0), np.where(std > 0, std, 1.0), held=held)
        cal.tail = np.quantile(cal.z(layer_scores), tail_level, axis=0)
        return cal

    def z(self, layer_scores: np.ndarray) -> np.ndarray:
        return (layer_scores - self.mean) / self.std

    def max_z(self, layer_scores: np.ndarray) -> np.ndarray:
        """Calibrated LA-OOD: the maximum over layers of the standardised per-layer scores."""
        return self.z(layer_scores).max(axis=1)

    def excesses(self, layer_scores: np.ndarray) -> np.ndarray:
        """``(N, L)``: how far each layer's standardised score lies beyond that layer's in-distribution
        ``tail`` quantile (0 inside it)."""
        if self.tail is None:
            raise ValueError("this calibration has no tail quantiles (written by an older version); "
                             "refit the detectors with train_ood_detectors.py --force")
        return np.clip(self.z(layer_scores) - self.tail, 0, None)

    def tail_excess(self, layer_scores: np.ndarray) -> np.ndarray:
        """The largest amount by which any layer's standardised score exceeds that layer's in-distribution
        ``tail`` quantile; 0 for an image that no layer finds atypical."""
        return self.excesses(layer_scores).max(axis=1)


def early_exit(layer_scores: np.ndarray, calib: Calibration, threshold: float = 0.99, k: int = 2):
    """Layer-adaptive inference in the manner of ES-OOD (2024): walk the layers in network order and stop,
    flagging the image as OOD, once its calibrated OOD probability ``Phi(z)`` has exceeded ``threshold`` at
    ``k`` layers (counted cumulatively, not necessarily in a row).

    Returns ``(score, stop)``: ``stop`` is the 0-based layer where an image stopped, or -1 if it never did;
    stopped images rank above every image that ran to the end, earlier stops above later ones, and ties
    within a group are broken by the calibrated LA-OOD score seen so far. Images that never stop get the
    full calibrated LA-OOD score.
    """
    z = calib.z(layer_scores)
    n, n_layers = z.shape
    hits = np.cumsum(norm.cdf(z) > threshold, axis=1)          # (N, L) exceedances so far
    stopped = hits[:, -1] >= k
    stop = np.where(stopped, np.argmax(hits >= k, axis=1), -1)
    running_max = np.maximum.accumulate(z, axis=1)
    tiebreak = np.tanh(running_max[np.arange(n), np.where(stopped, stop, n_layers - 1)] / 10)   # in (-1, 1)
    score = np.where(stopped, 3.0 * (n_layers - stop) + tiebreak, tiebreak)
    return score, stop


def exit_cost(stop: np.ndarray, cumulative_macs: Sequence[int], total_macs: int) -> float:
    """Mean fraction of the network's multiply-accumulates spent per image (1 for images that never stop)."""
    frac = np.asarray(cumulative_macs, dtype=float) / total_macs
    return float(np.where(stop >= 0, frac[np.clip(stop, 0, None)], 1.0).mean())
