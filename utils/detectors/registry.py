"""The registry of per-layer detector kinds, and how a fitted detector is saved and loaded without pickle.

A kind is a :class:`DetectorKind` subclass decorated with :func:`register_detector`; it says which of
``LAOOD``'s settings it uses (``params``), how one layer is fitted (``fit``: a ``Pipeline(StandardScaler,
estimator)`` and a record), and which estimator class its files hold (``estimator``). That estimator keeps its
fitted state in plain arrays and numbers, named by its ``ARRAYS`` and ``SCALARS``; :func:`save_detector` writes
them with the scaler's statistics into one ``.npz`` beside a JSON header, and :func:`load_detector` reads them
back with ``allow_pickle=False``, so loading a file a run wrote never executes code from it.
"""
import json
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple, Type

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..io import atomic_path

FORMAT = 1                  # version of the file layout below; a change means earlier files are refitted
AUTO_EXACT_MAX = 100_000    # --detector auto: the exact SVM up to this many fitting images
CHUNK = 8192                # rows per chunk wherever features are streamed

_KINDS: Dict[str, "DetectorKind"] = {}


class DetectorKind:
    """One kind of per-layer detector. Subclasses set ``name``, ``params``, ``estimator`` and ``fit``."""

    name: str = ""
    params: Tuple[str, ...] = ()       # the LAOOD settings this kind reads (and the manifest records)
    estimator: Type = object           # the class its saved files hold
    version: int = 1                   # bump when its fitted detectors change; older ones are then refitted
    help: str = ""

    def fit(self, X, seed: int = 0, **params) -> Tuple[Pipeline, Dict]:
        """``(Pipeline(StandardScaler, estimator), record)`` fitted on one layer's train features ``X``."""
        raise NotImplementedError

    def tag(self, params: Dict) -> str:
        """The name of its detector and results directories (before calibration and seed)."""
        return self.name


def register_detector(cls: Type[DetectorKind]) -> Type[DetectorKind]:
    """Class decorator: register a detector kind under its ``name`` (``--detector`` offers every one)."""
    _KINDS[cls.name] = cls()
    return cls


def get_detector(name: str) -> DetectorKind:
    if name not in _KINDS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(list_detectors())}")
    return _KINDS[name]


def list_detectors() -> List[str]:
    return list(_KINDS)


def detector_choices() -> List[str]:
    """What ``--detector`` accepts: every registered kind, and ``auto``."""
    return list_detectors() + ["auto"]


def resolve_detector(detector: str, n_fit: int) -> Tuple[str, str]:
    """``(detector, why)``: ``auto`` becomes the exact One-Class SVM up to :data:`AUTO_EXACT_MAX` fitting images and
    the approximate one above; a registered name stays itself."""
    if detector != "auto":
        return get_detector(detector).name, f"{detector} (asked for)"
    exact, approx = get_detector("ocsvm").name, get_detector("ocsvm-approx").name
    if n_fit <= AUTO_EXACT_MAX:
        return exact, f"auto: {n_fit:,} fitting images <= {AUTO_EXACT_MAX:,}, the exact One-Class SVM ({exact})"
    return approx, f"auto: {n_fit:,} fitting images > {AUTO_EXACT_MAX:,}, the approximate One-Class SVM ({approx})"


NON_FINITE = "features contain NaN or infinite values; recompute them with save_inter_outputs.py"


def fit_scaler(X) -> Tuple[np.ndarray, StandardScaler]:
    """``(X as float64, StandardScaler fitted on it)``, refusing non-finite features."""
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise ValueError(NON_FINITE)
    return X, StandardScaler().fit(X)


def streamed_scaler(X, chunk: int = CHUNK) -> StandardScaler:
    """A StandardScaler fitted chunk by chunk (a memory map is never read whole), checking every value."""
    scaler = StandardScaler()
    for s in range(0, len(X), chunk):
        part = np.asarray(X[s:s + chunk], dtype=np.float64)
        if not np.isfinite(part).all():
            raise ValueError(NON_FINITE)
        scaler.partial_fit(part)
    return scaler


def fit_layer(X, detector: str = "ocsvm", seed: int = 0, **params) -> Tuple[Pipeline, Dict]:
    """Fit one layer's detector of kind ``detector`` on in-distribution train features ``X``; returns it and a
    record (the kind's choices, e.g. gamma and its SAS errors, and the fit's size and time). ``params``: the
    kind's settings (``gammas``, ``nu``, ``select_size``, ``prune``, ``n_components``, ``cache_size``); those
    another kind uses are ignored."""
    kind = get_detector(detector)
    start = time.time()
    pipeline, record = kind.fit(X, seed=seed, **params)
    record.update(detector=kind.name, n_train=len(X), dim=X.shape[1], fit_seconds=time.time() - start)
    return pipeline, record


def ood_score(pipeline: Pipeline, X) -> np.ndarray:
    """Per-layer OOD score: the negated decision function (larger = more anomalous)."""
    return -pipeline.decision_function(np.asarray(X, dtype=np.float64))


# ----------------------------------------------------------------------------- saving without pickle

class DetectorFileError(ValueError):
    """A detector file that is missing, damaged or not one this version wrote."""


def _plain(value):
    """A JSON-safe copy of a parameter or fitted number."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def save_detector(path: Path, pipeline: Pipeline, kind: str) -> None:
    """Write a fitted ``Pipeline(StandardScaler, estimator)`` to ``path`` (``.npz``), atomically: the scaler's
    statistics and the estimator's ``ARRAYS`` as arrays, and a JSON header (kind, parameters, ``SCALARS``)."""
    scaler, est = pipeline[0], pipeline[-1]
    arrays = {f"scale.{a}": np.asarray(getattr(scaler, a)) for a in ("mean_", "scale_", "var_")}
    arrays.update({f"est.{a}": np.asarray(getattr(est, a)) for a in est.ARRAYS})
    header = {"format": FORMAT, "kind": kind, "estimator": type(est).__name__,
              "params": {k: _plain(v) for k, v in est.get_params().items()},
              "scalars": {a: _plain(getattr(est, a)) for a in est.SCALARS},
              "scaler_n_samples_seen": int(np.asarray(scaler.n_samples_seen_).max())}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **arrays)


def load_detector(path: Path, rebuild: str = "train_ood_detectors.py --force") -> Pipeline:
    """The detector :func:`save_detector` wrote. Nothing in the file is executed: arrays are read with
    ``allow_pickle=False`` and the header is JSON; a file that does not parse names itself and ``rebuild``."""
    path = Path(path)
    if not path.exists():
        raise DetectorFileError(f"detector file {path} is missing; rebuild the detectors with {rebuild}")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
        kind = get_detector(header["kind"])
        if header.get("format") != FORMAT or header.get("estimator") != kind.estimator.__name__:
            raise ValueError(f"format {header.get('format')} of {header.get('estimator')}, expected {FORMAT} of "
                             f"{kind.estimator.__name__}")
        scaler = StandardScaler()
        for a in ("mean_", "scale_", "var_"):
            setattr(scaler, a, arrays[f"scale.{a}"])
        scaler.n_features_in_ = len(scaler.mean_)
        scaler.n_samples_seen_ = header["scaler_n_samples_seen"]
        est = kind.estimator(**header["params"])
        for a in est.ARRAYS:
            setattr(est, a, arrays[f"est.{a}"])
        for a, v in header["scalars"].items():
            if a not in est.SCALARS:
                raise ValueError(f"unexpected field {a!r}")
            setattr(est, a, v)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise DetectorFileError(f"detector file {path} cannot be read ({type(e).__name__}: {e}); rebuild the "
                                f"detectors with {rebuild}") from e
    return Pipeline([("scale", scaler), (kind.name, est)])


def average_path_length(n) -> np.ndarray:
    """c(n), the average path length of an unsuccessful search in a binary search tree of n points (Liu et al.,
    Isolation Forest, 2008, eq. 1): 0 for n <= 1, 1 for n = 2, 2 H(n - 1) - 2 (n - 1) / n otherwise."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out
