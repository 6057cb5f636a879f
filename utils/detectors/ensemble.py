"""``LAOOD``: one detector per tapped layer, fitted in parallel (local processes or a Dask cluster); an image's
OOD score is the maximum over layers of the per-layer scores."""
import contextlib
from typing import Dict, Optional, Sequence

import numpy as np
from joblib import Parallel, delayed, parallel_config
from sklearn.base import BaseEstimator
from tqdm import tqdm

from ..paths import Layout
from .approx import APPROX_LANDMARKS
from .calibration import Calibration, calibration_split
from .approx import APPROX_SELECT_SIZE
from .registry import AUTO_EXACT_MAX, FORMAT, detector_choices, fit_layer, get_detector, list_detectors, ood_score
from .registry import resolve_detector
from .sas import GAMMAS, NU

# Settings that change how fast a fit runs, never what it fits: kept out of manifests and directory names.
RUNTIME = ("n_jobs", "cache_size", "backend")


class Flag:
    """The command-line flag of one setting of :meth:`LAOOD.get_params`: its help, the type of its values, older
    spellings still accepted, and a default of the scripts where it differs from the constructor's."""

    def __init__(self, help: str, type=None, aliases=(), default=None, nargs=None, choices=None):
        self.help, self.type, self.aliases, self.default = help, type, tuple(aliases), default
        self.nargs, self.choices = nargs, choices


def _kinds_help() -> str:
    kinds = "; ".join(f"{name}: {get_detector(name).help}" for name in list_detectors())
    return (f"per-layer detector ({kinds}; auto: the exact One-Class SVM up to {AUTO_EXACT_MAX:,} fitting images, "
            f"the approximate one above)")


# One flag per setting; ``seed`` is the scripts' shared --seed and ``backend`` follows the Dask flags.
FLAGS: Dict[str, Flag] = {
    "detector": Flag(_kinds_help(), str, choices=detector_choices()),
    "gammas": Flag("One-Class SVM gamma grid (default: the model recipe's, the original's for most)", float,
                   nargs="+"),
    "nu": Flag("One-Class SVM nu", float),
    "select_size": Flag("choose gamma on a seeded subsample of this many train features (the final detector is "
                        "still fitted on all); default: all for ocsvm, as the original, "
                        f"{APPROX_SELECT_SIZE:,} for ocsvm-approx", int),
    "prune": Flag("--no-prune: try every gamma of the grid instead of stopping once larger ones cannot win", bool),
    "n_components": Flag(f"ocsvm-approx: Nystroem landmarks per layer (more: closer to the exact SVM, slower; "
                         f"default {APPROX_LANDMARKS})", int, aliases=("--landmarks",)),
    "calibration_size": Flag("hold this many seeded train images back from the detectors to calibrate each layer's "
                             "score (adds the calibrated maximum, early exit and the tail rows to the tables); 0: off, "
                             "as the original", int),
    "n_jobs": Flag("layers fitted / scored in parallel (-1: all cores)", int, aliases=("--jobs",), default=-1),
    "cache_size": Flag("libsvm's kernel cache per layer fit, in MB", float),
}


class LAOOD(BaseEstimator):
    """Layer-adaptive OOD detection: one detector per layer, image score = max over layers.

    >>> la = LAOOD(detector="ocsvm", n_jobs=2).fit(train_layers)   # a list of (N, d_l) arrays
    >>> scores = la.score(test_layers)                              # (N,), larger = more OOD

    ``get_params()`` is the one list of its settings: the scripts build it from their flags, and the manifest
    (:meth:`settings`) and directory name (:attr:`tag`) are derived from it. ``detector`` names a registered kind
    (``utils.detectors.list_detectors()``); the kind reads the settings it uses (``gammas``, ``nu``,
    ``select_size``, ``prune`` for the One-Class SVMs, ``n_components`` for the approximate one).
    With ``calibration_size`` > 0, ``fit_calibrated`` holds that many train images back from the detectors
    and measures each layer's score distribution on them (``calibration_``), for the calibrated maximum
    and early exit. ``backend``: a joblib backend for the layer fits and scores (e.g. ``"dask"``).
    """

    def __init__(self, detector: str = "ocsvm", gammas: Sequence[float] = GAMMAS, nu: float = NU, seed: int = 0,
                 select_size: Optional[int] = None, prune: bool = True, n_components: int = APPROX_LANDMARKS,
                 calibration_size: int = 0, n_jobs: int = 1, cache_size: float = 1000,
                 backend: Optional[str] = None):
        self.detector, self.gammas, self.nu, self.seed = detector, gammas, nu, seed
        self.select_size, self.prune, self.n_components = select_size, prune, n_components
        self.calibration_size, self.n_jobs, self.cache_size, self.backend = calibration_size, n_jobs, cache_size, backend
        self.choice = ""   # how the detector was chosen (--detector auto), for the manifest

    @classmethod
    def from_flags(cls, args, **overrides) -> "LAOOD":
        """The detectors the flags of :data:`FLAGS` (and ``--seed``) ask for; ``overrides`` win, and a flag left at
        None (``--gammas``) keeps the constructor's default."""
        params = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
        return cls(**{**params, "seed": args.seed, **overrides})

    def resolved(self, n_fit: int) -> "LAOOD":
        """These settings with ``detector="auto"`` made a kind for ``n_fit`` fitting images (the exact One-Class
        SVM up to ``AUTO_EXACT_MAX``, the approximate one above); ``choice`` says how the kind was chosen."""
        detector, choice = resolve_detector(self.detector, n_fit)
        la = type(self)(**{**self.get_params(), "detector": detector})
        la.choice = choice
        return la

    @property
    def kind(self):
        return get_detector(self.detector)

    def _layer_params(self) -> Dict:
        """The settings each layer's fit reads (all but those of the ensemble itself)."""
        return {k: v for k, v in self.get_params().items()
                if k not in ("detector", "seed", "calibration_size", "n_jobs", "backend")}

    def settings(self) -> Dict:
        """What the fitted detectors depend on, for the manifest: the kind, its version and the settings it reads,
        the seed and the calibration size (runtime settings such as ``n_jobs`` excluded)."""
        params = self.get_params()
        out = {"detector": self.detector, "detector_version": self.kind.version, "file_format": FORMAT,
               "seed": self.seed, "calibration_size": self.calibration_size}
        out.update({k: list(v) if k == "gammas" else v for k, v in params.items() if k in self.kind.params})
        return out

    @property
    def tag(self) -> str:
        """Names the directories of these detectors and their results (see utils/paths.py)."""
        return Layout.detector_tag(self.kind.tag(self.get_params()), self.seed, self.calibration_size)

    def fit(self, layers: Sequence[np.ndarray], progress: bool = True) -> "LAOOD":
        params = self._layer_params()
        # Largest layers first, so the slowest fits do not end up alone at the tail.
        order = sorted(range(len(layers)), key=lambda i: -layers[i].shape[1])
        jobs = (delayed(fit_layer)(layers[i], self.detector, self.seed, **params) for i in order)
        with self._parallel():
            results = Parallel(n_jobs=self.n_jobs, return_as="generator")(jobs)
            fitted = dict(zip(order, tqdm(results, total=len(order), desc=f"{self.detector} layers",
                                           disable=not progress)))
        self.detectors_ = [fitted[i][0] for i in range(len(layers))]
        self.records_ = [dict(layer=i, **fitted[i][1]) for i in range(len(layers))]
        self.calibration_ = None
        return self

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
        are scored by torch there, in batches (``utils.detectors.torch_scoring``), the others as usual."""
        if len(layers) != len(self.detectors_):
            raise ValueError(f"{len(layers)} feature layers given, but {len(self.detectors_)} detectors fitted")
        if device is not None:
            from .torch_scoring import is_rbf_svm, torch_ood_score
            return np.stack([torch_ood_score(d, X, device) if is_rbf_svm(d[-1]) else ood_score(d, X)
                             for d, X in zip(self.detectors_, layers)], axis=1)
        with self._parallel():
            cols = Parallel(n_jobs=self.n_jobs)(delayed(ood_score)(d, X) for d, X in zip(self.detectors_, layers))
        return np.stack(cols, axis=1)

    def _parallel(self):
        """joblib's configuration for the per-layer jobs: local processes, or ``backend`` (e.g. a Dask cluster,
        whose client must exist, see ``utils.cluster.dask_cluster``)."""
        return parallel_config(backend=self.backend) if self.backend else contextlib.nullcontext()

    def score(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """The LA-OOD score: the maximum over layers of the per-layer OOD scores."""
        return self.score_layers(layers).max(axis=1)
