"""The one seeded split of n rows into a held-back part and the rest, used wherever train images are held back
(calibration of the detectors, the held-out rows of methods that standardise a score, Gram's bounds)."""
from typing import Tuple

import numpy as np


def held_split(n: int, size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(held, kept)``: ``size`` seeded rows of ``range(n)`` and the others, both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size:])
