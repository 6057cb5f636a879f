"""Self-adaptive data shifting (SAS; Wang et al., Pattern Recognition 2018): the One-Class SVM's ``gamma``
chosen from the in-distribution features alone, by pseudo-outliers pushed out of the data's edge and
pseudo-inliers from a held-out split. Which error each gamma gets is the detector kind's (``gamma_errors``)."""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

GAMMAS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)   # the original's grid (a model's recipe may widen it)
NU = 0.001
EDGE_THRESHOLD = 0.01


def sas_k(n: int) -> int:
    """Neighbourhood size of SAS: k = ceil(5 log10 n)."""
    return int(math.ceil(5 * math.log10(n)))


@dataclass
class Shift:
    """Result of SAS on one sample: which points are edge points and their pseudo-outliers."""
    edge: np.ndarray          # bool mask over the sample
    outliers: np.ndarray      # (n_edge, d) pseudo-outliers
    length: float             # the shift length l
    k: int


def shift_data(X: np.ndarray, k: Optional[int] = None, threshold: float = EDGE_THRESHOLD,
               chunk: int = 256) -> Shift:
    """Self-adaptive data shifting: edge points of ``X`` pushed outwards along their normals.

    For each point x_i and its k nearest neighbours x_j, v_ij = (x_i - x_j) / ||x_i - x_j|| and the
    normal n_i = sum_j v_ij. x_i is an edge point when the fraction of j with v_ij . n_i >= 0 exceeds
    1 - threshold. Its pseudo-outlier is x_i + l n_i / ||n_i||, where l is the mean of the edge points'
    distances to their k+1 nearest neighbours (the first being the point itself, at distance 0).
    Vectorised over points in chunks, so memory stays at ``chunk * k * d`` floats.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    k = k or sas_k(n)
    if n <= k:
        raise ValueError(f"SAS needs more than k={k} points, got {n}")
    dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(X).kneighbors(X)
    # kneighbors on the fitted set returns each point first (distance 0) unless it has duplicates;
    # drop the point itself wherever it appears, keep k true neighbours.
    self_pos = idx == np.arange(n)[:, None]
    has_self = self_pos.any(axis=1)
    keep = ~self_pos
    keep[~has_self, -1] = False
    neigh = idx[keep].reshape(n, k)
    edge = np.zeros(n, dtype=bool)
    normals = np.zeros_like(X)
    for s in range(0, n, chunk):
        diff = X[s:s + chunk, None, :] - X[neigh[s:s + chunk]]               # (c, k, d)
        norms = np.linalg.norm(diff, axis=2, keepdims=True)
        v = np.divide(diff, norms, out=np.zeros_like(diff), where=norms > 0)
        normal = v.sum(axis=1)                                               # (c, d)
        frac = (np.einsum("ckd,cd->ck", v, normal) >= 0).mean(axis=1)
        edge[s:s + chunk] = frac > 1 - threshold
        normals[s:s + chunk] = normal
    if not edge.any():
        return Shift(edge, np.zeros((0, X.shape[1])), 0.0, k)
    length = float(dist[edge].mean())   # includes the zero self-distance, as the original
    unit = normals[edge] / np.maximum(np.linalg.norm(normals[edge], axis=1, keepdims=True), 1e-12)
    return Shift(edge, X[edge] + length * unit, length, k)


def split_indices(n: int, seed: int):
    """SAS's seeded 70/30 split of ``n`` rows: ``(fit rows, pseudo-inlier rows)``, as the original's
    ``train_test_split(Z, test_size=0.3)``."""
    return train_test_split(np.arange(n), test_size=0.3, random_state=seed)


def select_gamma(Z: np.ndarray, gammas: Sequence[float] = GAMMAS, nu: float = NU, seed: int = 0,
                 prune: bool = True, detector: str = "ocsvm", **params) -> Dict:
    """Choose the One-Class SVM's gamma on standardised features ``Z`` by SAS, without OOD data.

    ``Z`` is split 70/30 (seeded); pseudo-outliers are shifted out of the 30% part, which also serves
    as the pseudo-inliers. Each gamma gets an error from the detector kind's ``gamma_errors`` (the exact SVM's:
    ``0.5 * (pseudo-outliers accepted) + 0.5 * (30% part rejected)`` of a model fitted on the 70% part); the
    smallest error wins, the smaller gamma on a tie. If no error is below 1, the original's fallback
    ``gamma = 1 / (d * std(Z_70))``, ``nu = 0.5`` is used. ``prune`` lets a kind stop early where larger gammas
    cannot win; ``params`` go to the kind (``cache_size``, ``n_components``).
    """
    from .registry import get_detector
    fit_rows, val_rows = split_indices(len(Z), seed)
    fit_part, val_part = Z[fit_rows], Z[val_rows]
    shift = shift_data(val_part)
    errors = get_detector(detector).gamma_errors(fit_part, val_part, shift.outliers, gammas, nu=nu, seed=seed,
                                                 prune=prune, **params)
    best = min((e, g) for g, e in errors.items())
    if best[0] < 1.0:
        gamma, chosen_nu = best[1], nu
    else:
        gamma, chosen_nu = 1.0 / (Z.shape[1] * fit_part.std()), 0.5
    return {"gamma": float(gamma), "nu": chosen_nu, "error": best[0], "errors": errors,
            "n_edge": int(shift.edge.sum()), "shift_length": shift.length, "k": shift.k,
            "fallback": best[0] >= 1.0}


def selection_rows(n: int, size: Optional[int], seed: int) -> np.ndarray:
    """Which of ``n`` rows gamma is chosen on: a seeded subsample of ``size``, or all."""
    if size is not None and size < n:
        return np.random.default_rng(seed).choice(n, size=size, replace=False)
    return np.arange(n)


def selection_sample(X, scaler, size: Optional[int], seed: int) -> np.ndarray:
    """The standardised rows gamma is chosen on: all of ``X``, or a seeded subsample of ``size``."""
    if size is not None and size < len(X):
        return scaler.transform(X[selection_rows(len(X), size, seed)])
    return scaler.transform(X)
