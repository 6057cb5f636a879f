"""Gram-matrix deviations (Sastry and Oore, ICML 2020), a layer-wise method like LA-OOD.

For a tap's output F (C channels x HW positions) and a pole p, the statistic is the row sum of the
p-th order Gram matrix, (F^p F^p')^(1/p) (signed root), one value per channel; poles 1 to 10, as the paper.
Per class and tap, the minimum and maximum of every statistic over the in-distribution train images are
the bounds; an image's deviation at a tap is the summed relative excursion of its statistics outside the
bounds of its predicted class:

    delta_l(x) = sum_p sum_c  relu(min - g) / |min + 1e-6|  +  relu(g - max) / |max + 1e-6|

and its OOD score is sum_l delta_l(x) / E[delta_l], the expectation taken over train images held back
from the bounds (10%, seeded). All of it uses train data only.

The statistics need the full feature maps, so they are computed in stage 2 (``save_inter_outputs.py
--gram``): bounds during the train split's pass, the held-back expectation in a second pass over those
10%, and every other set's per-tap deviations (``gram.npy``, ``(N, L)``) during its pass.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .io import atomic_path
from .splits import held_split

POLES = tuple(range(1, 11))
HELD_FRACTION = 0.1


def gram_statistics(fmap: torch.Tensor, poles: Sequence[int] = POLES) -> torch.Tensor:
    """``(N, P, C)`` row sums of the p-th order Gram matrices of ``(N, C, H, W)`` feature maps, in float64
    (x^20 overflows float32 for activations beyond about 80)."""
    f = fmap.detach().double().reshape(fmap.shape[0], fmap.shape[1], -1)      # (N, C, HW); HW = 1 for a vector
    out = []
    for p in poles:
        t = f ** p
        g = torch.bmm(t, t.transpose(1, 2)).sum(2)                            # (N, C)
        out.append(g.sign() * g.abs() ** (1.0 / p))
    return torch.stack(out, 1)


def deviations(stats: Sequence[torch.Tensor], mins: Sequence[np.ndarray], maxs: Sequence[np.ndarray],
               classes: np.ndarray) -> np.ndarray:
    """``(N, L)``: each tap's deviation of ``stats`` (per tap ``(N, P, C)``) from the bounds of ``classes``."""
    cols = []
    for g, lo, hi in zip(stats, mins, maxs):
        g = g.cpu().double()
        lo, hi = torch.from_numpy(lo[classes]), torch.from_numpy(hi[classes])   # (N, P, C)
        d = torch.relu(lo - g) / (lo + 1e-6).abs() + torch.relu(g - hi) / (hi + 1e-6).abs()
        cols.append(d.sum((1, 2)).numpy())
    return np.stack(cols, 1)


@dataclass
class GramBounds:
    """Per-tap ``(classes, P, C)`` minima and maxima of the train statistics, and the held-back expectation
    of each tap's deviation."""
    mins: List[np.ndarray]
    maxs: List[np.ndarray]
    expected: Optional[np.ndarray] = None     # (L,)
    held: Optional[np.ndarray] = None         # train indices held back from the bounds

    @classmethod
    def empty(cls, num_classes: int, widths: Sequence[int], poles: int = len(POLES)) -> "GramBounds":
        return cls([np.full((num_classes, poles, w), np.inf) for w in widths],
                   [np.full((num_classes, poles, w), -np.inf) for w in widths])

    def update(self, stats: Sequence[torch.Tensor], labels: np.ndarray) -> None:
        for g, lo, hi in zip(stats, self.mins, self.maxs):
            g = g.cpu().double().numpy()
            for c in np.unique(labels):
                rows = g[labels == c]
                lo[c] = np.minimum(lo[c], rows.min(0))
                hi[c] = np.maximum(hi[c], rows.max(0))

    def check(self) -> None:
        missing = [c for c in range(len(self.mins[0])) if not np.isfinite(self.mins[0][c]).all()]
        if missing:
            raise ValueError(f"Gram bounds: no train images of classes {missing[:5]}; every class needs some")

    def deviations(self, stats: Sequence[torch.Tensor], classes: np.ndarray) -> np.ndarray:
        return deviations(stats, self.mins, self.maxs, classes)

    def score(self, devs: np.ndarray) -> np.ndarray:
        """The Gram OOD score of ``(N, L)`` deviations."""
        return (np.asarray(devs) / np.maximum(self.expected, 1e-12)).sum(1)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, expected=self.expected, held=self.held,
                         **{f"min_{i}": m for i, m in enumerate(self.mins)},
                         **{f"max_{i}": m for i, m in enumerate(self.maxs)})

    @classmethod
    def load(cls, path: Path) -> "GramBounds":
        with np.load(path) as z:
            n = sum(1 for k in z.files if k.startswith("min_"))
            return cls([z[f"min_{i}"] for i in range(n)], [z[f"max_{i}"] for i in range(n)], z["expected"], z["held"])


def held_back(n: int, seed: int) -> np.ndarray:
    """The seeded train indices held back from the bounds to measure the expected deviation."""
    return held_split(n, max(1, int(HELD_FRACTION * n)), seed)[0]
