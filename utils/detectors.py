"""Per-layer one-class detectors, with the scikit-learn estimator contract.

Sign convention, used everywhere in this repository: **an OOD score is larger for more anomalous
inputs**. For a fitted pipeline it is ``-decision_function``.

A layer's detector is a ``Pipeline(StandardScaler, OneClassSVM | ApproxOneClassSVM | IsolationForest)``:
the scaler is fitted on all in-distribution train features of the layer and travels with the detector.
The One-Class SVM's ``gamma`` is chosen by self-adaptive data shifting (SAS; Wang et al., Pattern
Recognition 2018), which makes pseudo-outliers from the data itself, so no OOD data is ever used.

Detectors (``--detector``):

- ``ocsvm``: libsvm's exact RBF One-Class SVM, as the original. Its fit grows about as n^2.
- ``ocsvm-approx``: the RBF kernel approximated by Nystroem features and a linear One-Class SVM fitted by
  averaged SGD over chunks of the (memory-mapped) features; linear in n, for sets far past CIFAR's size.
  Its gamma comes from the same SAS pseudo-outliers and pseudo-inliers, ranked rather than thresholded
  (:func:`_approx_errors` says why).
- ``iforest``: an Isolation Forest.
- ``auto``: ``ocsvm`` up to :data:`AUTO_EXACT_MAX` fitting images, ``ocsvm-approx`` above.
"""
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from joblib import Parallel, delayed, parallel_config
from scipy.stats import norm
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import SGDOneClassSVM
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .paths import Layout

GAMMAS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
WIDE_GAMMAS = GAMMAS + (0.25, 0.5, 1.0)   # for DenseNet, as the original intended
# The original meant DenseNet to search the wider grid; a name mismatch meant it never did.
GAMMA_GRIDS = {"densenet100": WIDE_GAMMAS}
NU = 0.001
EDGE_THRESHOLD = 0.01

DETECTORS = ("ocsvm", "ocsvm-approx", "iforest", "auto")
AUTO_EXACT_MAX = 100_000       # --detector auto: the exact SVM up to this many fitting images
APPROX_SELECT_SIZE = 20_000    # ocsvm-approx chooses gamma on a seeded subsample of at most this many
APPROX_LANDMARKS = 512         # ocsvm-approx's default number of Nystroem landmarks (--landmarks)
SELECT_UPDATES = 400_000       # ocsvm-approx's SGD updates per candidate gamma (the final fit makes 1,000,000)
CHUNK = 8192                   # rows per chunk wherever features are streamed


def resolve_detector(detector: str, n_fit: int) -> Tuple[str, str]:
    """``(detector, why)``: ``auto`` becomes ``ocsvm`` or ``ocsvm-approx`` by the number of fitting images."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector != "auto":
        return detector, f"{detector} (asked for)"
    if n_fit <= AUTO_EXACT_MAX:
        return "ocsvm", f"auto: {n_fit:,} fitting images <= {AUTO_EXACT_MAX:,}, the exact One-Class SVM (ocsvm)"
    return "ocsvm-approx", (f"auto: {n_fit:,} fitting images > {AUTO_EXACT_MAX:,}, the approximate One-Class SVM "
                            f"(ocsvm-approx)")


@dataclass
class Shift:
    """Result of SAS on one sample: which points are edge points and their pseudo-outliers."""
    edge: np.ndarray          # bool mask over the sample
    outliers: np.ndarray      # (n_edge, d) pseudo-outliers
    length: float             # the shift length l
    k: int


def sas_k(n: int) -> int:
    """Neighbourhood size of SAS: k = ceil(5 log10 n)."""
    return int(math.ceil(5 * math.log10(n)))


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


def _fit_svm(Z: np.ndarray, gamma: float, nu: float, cache_size: float) -> OneClassSVM:
    return OneClassSVM(kernel="rbf", gamma=gamma, nu=nu, cache_size=cache_size).fit(Z)


class ApproxOneClassSVM(OutlierMixin, BaseEstimator):
    """An RBF One-Class SVM for large n: Nystroem features (``n_components`` landmarks drawn from the data)
    and a linear One-Class SVM on them, fitted by averaged SGD (scikit-learn's ``SGDOneClassSVM``), then
    the offset placed at the ``nu`` quantile of the training scores, where the exact solution's
    nu-property puts it (at most a fraction nu of training points outside). Same contract as
    ``OneClassSVM``: ``decision_function`` (> 0 inside), ``predict`` (+1 / -1), ``score_samples``.

    ``fit`` reads ``X`` (an array or a memory map) in chunks of ``chunk_size`` rows, applying ``transform``
    (e.g. a fitted scaler's) to each: the mapped features are held in memory up to ``CACHE_BYTES``, else each
    pass maps seeded random chunks anew, so memory stays at a chunk; time grows linearly in n. SGD with
    nu = 0.001 converges slowly, so it runs for at least ``updates`` samples (and ``min_epochs`` passes):
    20 passes at 50,000 points, 2 at a million. Too few updates leave
    the decision values compressed (measured on VGG16 features: their spread at 200,000 updates is about
    half the exact SVM's, at 1,000,000 three quarters), which matters for the maximum over layers.
    """

    CACHE_BYTES = 1 << 30   # mapped features are kept in memory (float32) up to this size, else mapped again per pass
    OFFSET_SAMPLE = 200_000  # training rows the offset's quantile is taken on

    def __init__(self, gamma: float = 0.01, nu: float = NU, n_components: int = APPROX_LANDMARKS,
                 updates: int = 1_000_000, min_epochs: int = 2, chunk_size: int = CHUNK, random_state: int = 0):
        self.gamma, self.nu, self.n_components = gamma, nu, n_components
        self.updates, self.min_epochs = updates, min_epochs
        self.chunk_size, self.random_state = chunk_size, random_state

    def fit(self, X, y=None, transform=None):
        pre = transform or _as_float64
        rng = np.random.default_rng(self.random_state)
        self._set_landmarks(pre(X[self._landmark_rows(len(X), rng)]))
        if len(X) * len(self.components_) * 4 <= self.CACHE_BYTES:
            return self._fit_mapped(self._map_all(X, pre), rng)
        return self._fit_streamed(X, pre, rng)

    def _landmark_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(n, min(self.n_components, n), replace=False))

    def _set_landmarks(self, C: np.ndarray, d2_landmarks: Optional[np.ndarray] = None):
        """Nystroem: landmarks ``C`` and ``K_CC^(-1/2)`` from its eigendecomposition (tiny eigenvalues clipped)."""
        d2 = sq_distances(C, C) if d2_landmarks is None else d2_landmarks
        with threadpool_limits(1):   # a small matrix: one thread is fastest, and never stalls on a busy machine
            eigval, eigvec = np.linalg.eigh(np.exp(-self.gamma * d2.astype(np.float64)))
        self.components_ = np.asarray(C, dtype=np.float32)
        self.normalization_ = ((eigvec / np.sqrt(np.maximum(eigval, 1e-12))) @ eigvec.T).astype(np.float32)

    def landmarks(self, Z: np.ndarray) -> np.ndarray:
        """The rows of ``Z`` that ``fit(Z)`` takes as landmarks."""
        return Z[self._landmark_rows(len(Z), np.random.default_rng(self.random_state))]

    def fit_distances(self, C: np.ndarray, d2_landmarks: np.ndarray, d2_train: np.ndarray) -> "ApproxOneClassSVM":
        """``fit(Z)`` for training rows ``Z`` held in memory, given ``C = landmarks(Z)`` and the squared distances
        ``sq_distances(C, C)`` and ``sq_distances(Z, C)``, which do not depend on gamma: the same model."""
        rng = np.random.default_rng(self.random_state)
        self._landmark_rows(len(d2_train), rng)          # the generator's state as fit() leaves it
        self._set_landmarks(C, d2_landmarks)
        return self._fit_mapped(self.kernel_map(d2_train), rng)

    def _fit_mapped(self, mapped: np.ndarray, rng: np.random.Generator) -> "ApproxOneClassSVM":
        """SGD over the Nystroem features of every training row, in memory: shuffled once, then each pass takes
        contiguous chunks in a random order (SGD shuffles within a chunk), so no pass copies the features."""
        n = len(mapped)
        mapped = mapped[rng.permutation(n)]
        starts = np.arange(0, n, self.chunk_size)
        self._sgd(n, lambda: (mapped[s:s + self.chunk_size] for s in rng.permutation(starts)))
        return self._place_offset(n, [mapped[:self.OFFSET_SAMPLE]])   # shuffled: the first rows are a sample

    def _fit_streamed(self, X, pre, rng: np.random.Generator) -> "ApproxOneClassSVM":
        """SGD over seeded random chunks of ``X``, mapped anew on every pass (each chunk's rows sorted, so a memory
        map is read in order)."""
        n = len(X)

        def mapped(rows: np.ndarray) -> np.ndarray:
            return self.transform(pre(X[np.sort(rows)]))

        def in_chunks(rows: np.ndarray):
            return (mapped(rows[s:s + self.chunk_size]) for s in range(0, len(rows), self.chunk_size))

        self._sgd(n, lambda: in_chunks(rng.permutation(n)))
        return self._place_offset(n, in_chunks(rng.choice(n, min(n, self.OFFSET_SAMPLE), replace=False)))

    def _sgd(self, n: int, epoch) -> None:
        """Averaged SGD for at least ``updates`` samples and ``min_epochs`` passes of ``epoch()``'s chunks."""
        self.sgd_ = SGDOneClassSVM(nu=self.nu, learning_rate="optimal", average=True, random_state=self.random_state)
        self.epochs_ = max(self.min_epochs, math.ceil(self.updates / n))
        for _ in range(self.epochs_):
            for chunk in epoch():
                self.sgd_.partial_fit(chunk)

    def _place_offset(self, n: int, features) -> "ApproxOneClassSVM":
        """The offset at the ``nu`` quantile of the training scores (of at most ``OFFSET_SAMPLE`` seeded rows, enough
        for the 0.1% quantile); ``features``: their Nystroem features, chunk by chunk."""
        raw = np.concatenate([self.sgd_.score_samples(f) for f in features])
        # SGDOneClassSVM's dual coefficients sum to 1, libsvm's to nu * n: scaled to libsvm's, the decision
        # values of exact and approximate layers are comparable, which the maximum over layers needs.
        self.scale_ = self.nu * n
        self.offset_ = float(np.quantile(raw, self.nu)) * self.scale_
        self.n_features_in_ = self.components_.shape[1]
        return self

    def _map_all(self, X, pre) -> np.ndarray:
        out = np.empty((len(X), len(self.components_)), np.float32)
        for s in range(0, len(X), self.chunk_size):
            out[s:s + self.chunk_size] = self.transform(pre(X[s:s + self.chunk_size]))
        return out

    def transform(self, Z: np.ndarray) -> np.ndarray:
        """The Nystroem feature map, in float32: ``k(z, landmarks) @ normalization``."""
        return self.kernel_map(sq_distances(Z, self.components_))

    def kernel_map(self, d2: np.ndarray) -> np.ndarray:
        """The Nystroem features from squared distances to the landmarks (which do not depend on gamma)."""
        return np.exp(-self.gamma * d2) @ self.normalization_

    def score_samples(self, X) -> np.ndarray:
        X = np.asarray(X)
        return self.scale_ * np.concatenate([self.sgd_.score_samples(self.transform(X[s:s + self.chunk_size]))
                                             for s in range(0, len(X), self.chunk_size)] or [np.zeros(0)])

    def decision_function(self, X) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def decision_function_mapped(self, features: np.ndarray) -> np.ndarray:
        """``decision_function`` from Nystroem features (``transform``'s output)."""
        return self.scale_ * self.sgd_.score_samples(features) - self.offset_

    def predict(self, X) -> np.ndarray:
        return np.where(self.decision_function(X) >= 0, 1, -1)


def _as_float64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def sq_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``A`` and ``B``, in float32, clipped at 0."""
    A, B = np.asarray(A, dtype=np.float32), np.asarray(B, dtype=np.float32)
    return np.maximum((A * A).sum(1, keepdims=True) - 2 * A @ B.T + (B * B).sum(1), 0)


def select_gamma(Z: np.ndarray, gammas: Sequence[float] = GAMMAS, nu: float = NU, seed: int = 0,
                 prune: bool = True, cache_size: float = 1000, detector: str = "ocsvm",
                 n_components: int = APPROX_LANDMARKS) -> Dict:
    """Choose the One-Class SVM's gamma on standardised features ``Z`` by SAS, without OOD data.

    ``Z`` is split 70/30 (seeded); pseudo-outliers are shifted out of the 30% part, which also serves
    as the pseudo-inliers. For each gamma a model fitted on the 70% part gets
    ``error = 0.5 * (pseudo-outliers accepted) + 0.5 * (30% part rejected)``; the smallest error wins,
    the smaller gamma on a tie. If no error is below 1, the original's fallback
    ``gamma = 1 / (d * std(Z_70))``, ``nu = 0.5`` is used.

    ``prune``: gammas are tried in increasing order and the search stops once half the rejection rate
    of the inliers alone reaches the best error so far. That rate grows with gamma (the RBF boundary
    tightens around the training points), so no larger gamma can do better; those are also the
    slowest fits, where nearly every point becomes a support vector.

    ``detector="ocsvm-approx"`` (see :func:`_approx_errors`): the same split, pseudo-outliers and
    pseudo-inliers, but the error of each gamma is ``1 - AUROC`` of the approximate model's scores
    between pseudo-inliers and pseudo-outliers, over the whole grid (no pruning).
    """
    fit_part, val_part = train_test_split(Z, test_size=0.3, random_state=seed)
    shift = shift_data(val_part)
    if detector == "ocsvm-approx":
        errors = _approx_errors(fit_part, val_part, shift.outliers, gammas, nu, seed, n_components)
        best = min((e, g) for g, e in errors.items())
    elif detector == "ocsvm":
        errors, best = {}, (math.inf, None)
        for gamma in sorted(gammas):
            svm = _fit_svm(fit_part, gamma, nu, cache_size)
            accepted = float((svm.predict(shift.outliers) == 1).mean()) if len(shift.outliers) else 0.0
            rejected = float((svm.predict(val_part) == -1).mean())
            errors[gamma] = 0.5 * accepted + 0.5 * rejected
            if errors[gamma] < best[0]:
                best = (errors[gamma], gamma)
            if prune and 0.5 * rejected >= best[0]:
                break
    else:
        raise ValueError(f"{detector} has no gamma to select")
    if best[0] < 1.0:
        gamma, chosen_nu = best[1], nu
    else:
        gamma, chosen_nu = 1.0 / (Z.shape[1] * fit_part.std()), 0.5
    return {"gamma": float(gamma), "nu": chosen_nu, "error": best[0], "errors": errors,
            "n_edge": int(shift.edge.sum()), "shift_length": shift.length, "k": shift.k,
            "fallback": best[0] >= 1.0}


def _approx_errors(fit_part: np.ndarray, val_part: np.ndarray, outliers: np.ndarray, gammas: Sequence[float],
                   nu: float, seed: int, n_components: int) -> Dict[float, float]:
    """SAS errors of ``ocsvm-approx``: for each gamma, ``1 - AUROC`` of the pseudo-inliers (``val_part``) against
    the pseudo-outliers under a model fitted on ``fit_part``.

    Why not the exact detector's error at the model's own offset: with nu = 0.001 the approximate model's
    offset sits at the 0.1% quantile of its training scores, which at large gamma is set by the training
    points the landmarks cover worst; it then accepts nearly every pseudo-outlier at every gamma (measured on
    VGG16's first layer: 98-99% accepted across the grid, where libsvm accepts 0.6% at gamma 0.1), the error
    is flat near 0.5 and the choice is noise. The ranking does not depend on the offset. Each model equals
    ``ApproxOneClassSVM(gamma, nu, n_components, updates=SELECT_UPDATES, random_state=seed).fit(fit_part)``;
    the distances to the landmarks, which do not depend on gamma, are computed once for the whole grid.
    """
    if not len(outliers):
        return {float(g): 0.5 for g in gammas}
    est = ApproxOneClassSVM(nu=nu, n_components=n_components, updates=SELECT_UPDATES, random_state=seed)
    C = est.landmarks(fit_part)
    d2_landmarks, d2_fit, d2_val, d2_out = (sq_distances(A, C) for A in (C, fit_part, val_part, outliers))
    labels = np.r_[np.zeros(len(val_part)), np.ones(len(outliers))]
    errors = {}
    for gamma in sorted(gammas):
        est.gamma = gamma
        est.fit_distances(C, d2_landmarks, d2_fit)
        scores = np.r_[est.decision_function_mapped(est.kernel_map(d2_val)),
                       est.decision_function_mapped(est.kernel_map(d2_out))]
        errors[float(gamma)] = 1.0 - float(roc_auc_score(labels, -scores))
    return errors


def fit_layer(X: np.ndarray, detector: str = "ocsvm", gammas: Sequence[float] = GAMMAS, nu: float = NU,
              seed: int = 0, select_size: Optional[int] = None, prune: bool = True,
              cache_size: float = 1000, n_components: int = APPROX_LANDMARKS) -> Tuple[Pipeline, Dict]:
    """Fit one layer's detector on in-distribution train features ``X``; returns it and a record.

    The scaler and the final detector always see all of ``X``; with ``select_size`` only the
    gamma selection runs on a seeded subsample of that many points (``ocsvm-approx``: at most
    :data:`APPROX_SELECT_SIZE` by default). ``ocsvm-approx`` streams ``X`` in chunks (a memory map stays
    one), the others read it whole; ``n_components`` is its number of Nystroem landmarks.
    """
    start = time.time()
    if detector == "ocsvm-approx":
        scaler = _streamed_scaler(X)
        select_size = select_size or APPROX_SELECT_SIZE
    else:
        X = np.asarray(X, dtype=np.float64)
        if not np.isfinite(X).all():
            raise ValueError(_NON_FINITE)
        scaler = StandardScaler().fit(X)
    if detector in ("ocsvm", "ocsvm-approx"):
        if select_size is not None and select_size < len(X):
            sel = scaler.transform(X[np.random.default_rng(seed).choice(len(X), size=select_size, replace=False)])
        else:
            sel = scaler.transform(X)
        record = select_gamma(sel, gammas, nu, seed, prune, cache_size, detector, n_components)
        if detector == "ocsvm":
            est = _fit_svm(sel if sel.shape[0] == len(X) else scaler.transform(X), record["gamma"], record["nu"],
                           cache_size)
            record["support_vectors"] = int(len(est.support_))
        else:
            est = ApproxOneClassSVM(record["gamma"], record["nu"], n_components, random_state=seed).fit(
                X, transform=scaler.transform)
    elif detector == "iforest":
        est = IsolationForest(random_state=seed, n_jobs=1).fit(scaler.transform(X))
        record = {}
    else:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS[:-1])}")
    record.update(detector=detector, n_train=len(X), dim=X.shape[1], fit_seconds=time.time() - start)
    return Pipeline([("scale", scaler), (detector, est)]), record


_NON_FINITE = "features contain NaN or infinite values; recompute them with save_inter_outputs.py"


def _streamed_scaler(X, chunk: int = CHUNK) -> StandardScaler:
    """A StandardScaler fitted chunk by chunk (a memory map is never read whole), checking every value."""
    scaler = StandardScaler()
    for s in range(0, len(X), chunk):
        part = np.asarray(X[s:s + chunk], dtype=np.float64)
        if not np.isfinite(part).all():
            raise ValueError(_NON_FINITE)
        scaler.partial_fit(part)
    return scaler


def ood_score(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """Per-layer OOD score: the negated decision function (larger = more anomalous)."""
    return -pipeline.decision_function(np.asarray(X, dtype=np.float64))


@dataclass
class LAOOD:
    """Layer-adaptive OOD detection: one detector per layer, image score = max over layers.

    >>> la = LAOOD(detector="ocsvm", n_jobs=2).fit(train_layers)   # a list of (N, d_l) arrays
    >>> scores = la.score(test_layers)                              # (N,), larger = more OOD

    With ``calibration_size`` > 0, ``fit_calibrated`` holds that many train images back from the detectors
    and measures each layer's score distribution on them (``calibration_``), for the calibrated maximum
    and early exit.
    """
    detector: str = "ocsvm"
    gammas: Sequence[float] = GAMMAS
    nu: float = NU
    seed: int = 0
    select_size: Optional[int] = None
    prune: bool = True
    n_jobs: int = 1
    cache_size: float = 1000
    calibration_size: int = 0
    backend: Optional[str] = None     # a joblib backend for the layer fits and scores, e.g. "dask"
    choice: str = ""                  # how the detector was chosen (--detector auto), for the manifest
    n_components: int = APPROX_LANDMARKS  # ocsvm-approx: Nystroem landmarks per layer
    detectors_: List[Pipeline] = field(default_factory=list, repr=False)
    calibration_: Optional["Calibration"] = field(default=None, repr=False)
    records_: List[Dict] = field(default_factory=list, repr=False)

    def fit(self, layers: Sequence[np.ndarray], progress: bool = True) -> "LAOOD":
        kwargs = dict(detector=self.detector, gammas=self.gammas, nu=self.nu, seed=self.seed,
                      select_size=self.select_size, prune=self.prune, cache_size=self.cache_size,
                      n_components=self.n_components)
        # Largest layers first, so the slowest fits do not end up alone at the tail.
        order = sorted(range(len(layers)), key=lambda i: -layers[i].shape[1])
        jobs = (delayed(fit_layer)(layers[i], **kwargs) for i in order)
        with self._parallel():
            results = Parallel(n_jobs=self.n_jobs, return_as="generator")(jobs)
            fitted = dict(zip(order, tqdm(results, total=len(order), desc=f"{self.detector} layers",
                                           disable=not progress)))
        self.detectors_ = [fitted[i][0] for i in range(len(layers))]
        self.records_ = [dict(layer=i, **fitted[i][1]) for i in range(len(layers))]
        return self

    @property
    def tag(self) -> str:
        """Names the directories of these detectors and their results (see utils/paths.py)."""
        name = self.detector
        if name == "ocsvm-approx" and self.n_components != APPROX_LANDMARKS:
            name += f"-m{self.n_components}"
        return Layout.detector_tag(name, self.seed, self.calibration_size)

    def fit_calibrated(self, layers: Sequence[np.ndarray], progress: bool = True) -> "LAOOD":
        """Hold back ``calibration_size`` seeded train images, fit on the rest, calibrate on the held-back."""
        n = len(layers[0])
        if not 0 < self.calibration_size < n:
            raise ValueError(f"calibration_size must lie between 0 and the {n} train images, "
                             f"not {self.calibration_size}")
        held, kept = calibration_split(n, self.calibration_size, self.seed)
        self.fit([np.asarray(X[kept]) for X in layers], progress)
        self.calibration_ = Calibration.fit(self.score_layers([np.asarray(X[held]) for X in layers]), held=held)
        return self

    def score_layers(self, layers: Sequence[np.ndarray], device=None) -> np.ndarray:
        """``(N, L)`` OOD scores of every layer; with ``device`` (e.g. ``"cuda"``), the RBF One-Class SVM layers
        are scored by torch there, in batches (``utils.torch_svm``), the others by scikit-learn."""
        if len(layers) != len(self.detectors_):
            raise ValueError(f"{len(layers)} feature layers given, but {len(self.detectors_)} detectors fitted")
        if device is not None:
            from .torch_svm import is_rbf_svm, torch_ood_score
            return np.stack([torch_ood_score(d, X, device) if is_rbf_svm(d[-1]) else ood_score(d, X)
                             for d, X in zip(self.detectors_, layers)], axis=1)
        with self._parallel():
            cols = Parallel(n_jobs=self.n_jobs)(delayed(ood_score)(d, X) for d, X in zip(self.detectors_, layers))
        return np.stack(cols, axis=1)

    def _parallel(self):
        """joblib's configuration for the per-layer jobs: local processes, or ``backend`` (e.g. a Dask cluster,
        whose client must exist, see ``utils.cli.dask_cluster``)."""
        return parallel_config(backend=self.backend) if self.backend else contextlib.nullcontext()

    def score(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """The LA-OOD score: the maximum over layers of the per-layer OOD scores."""
        return self.score_layers(layers).max(axis=1)


# ----------------------------------------------------------------------------- calibration and early exit

TAIL_LEVEL = 0.99   # the in-distribution quantile beyond which a layer's score counts as evidence


def calibration_split(n: int, size: int, seed: int):
    """The seeded ``(held, kept)`` train indices of :meth:`LAOOD.fit_calibrated` (both sorted)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size:])


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
