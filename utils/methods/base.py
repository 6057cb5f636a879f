"""The method registry: what a scoring method is, what it is handed, and how its hyperparameters are declared.

A method is a function ``fn(inputs, **hyperparameters) -> {set name: scores}``, registered with
:func:`register_method`. Its hyperparameters are the keyword arguments of ``fn``: the default is written once,
in the signature; the search grid (for ``--tune``) beside it, in ``grid=``. Sign convention: **an OOD score is
larger for more anomalous inputs**.
"""
import inspect
import itertools
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..detectors import Calibration
from ..producers import get_producer, list_producers
from ..splits import held_split

log = logging.getLogger("utils.methods")

NEEDS = frozenset({"logits", "penultimate", "labels", "layers", "head", "nac_stages", "detectors", "calibration"})
# ... and the name of every stage-2 producer (utils/producers: odin, gram, nac).
HELD = "__held__"        # the held-back train rows, scored as one more set when a score is standardised


class Rows:
    """Rows ``idx`` of a list of (memory-mapped) arrays, read only when a layer is asked for."""

    def __init__(self, arrays: Sequence[np.ndarray], idx: np.ndarray):
        self.arrays, self.idx = arrays, idx

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.arrays[i][self.idx])


ROW_KEYS = ("logits", "penultimate", "labels", "odin", "gram", "nac")


def take(features: Dict, idx: np.ndarray) -> Dict:
    """The rows ``idx`` of a set's features (``layers`` stay lazy; settings such as ``nac_taps`` are kept)."""
    out = {k: v for k, v in features.items() if k not in ROW_KEYS and k != "layers"}
    out.update({k: np.asarray(features[k][idx]) for k in ROW_KEYS if k in features})
    if "layers" in features:
        out["layers"] = Rows(features["layers"], idx)
    if "nac_stages" in features:
        v = features["nac_stages"]
        out["nac_stages"] = {**v, "rows": np.asarray(v["rows"])[idx], "stages": [np.asarray(a)[idx] for a in v["stages"]]}
    return out


@dataclass
class Inputs:
    """What detection hands every method."""
    train: Dict                                          # the train split's features (load_features)
    sets: Dict[str, Dict]                                # the evaluated sets' features, test split first
    head: Optional[Tuple[np.ndarray, np.ndarray]] = None
    layer_scores: Optional[Dict[str, np.ndarray]] = None  # per set, (N, L) scores of the fitted detectors
    calibration: Optional[Calibration] = None
    seed: int = 0
    exit_threshold: float = 0.99
    exit_k: int = 2

    def available(self) -> FrozenSet[str]:
        have = {"logits", "penultimate", "labels", "layers"}
        if self.head is not None:
            have.add("head")
        have.update(p for p in list_producers() if get_producer(p).available(self.train, self.sets))
        if self.sets and "nac_stages_fit" in self.train and all("nac_stages" in f for f in self.sets.values()):
            have.add("nac_stages")
        if self.layer_scores is not None:
            have.add("detectors")
        if self.calibration is not None and self.calibration.held is not None:
            have.add("calibration")
        return frozenset(have)

    def each(self, fn: Callable[[Dict], np.ndarray]) -> Dict[str, np.ndarray]:
        return {name: np.asarray(fn(f), dtype=np.float64) for name, f in self.sets.items()}

    def held_split(self, fraction: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
        """``(held, kept)`` train indices: the detectors' calibration images where there are some,
        else a seeded ``fraction`` (methods that standardise a score on unseen train images use it)."""
        n = len(self.train["logits"])
        if self.calibration is not None and self.calibration.held is not None:
            held = np.asarray(self.calibration.held)
        else:
            return held_split(n, max(1, int(fraction * n)), self.seed)
        return held, np.setdiff1d(np.arange(n), held, assume_unique=True)

    def fitted_on(self, kept: np.ndarray, held: np.ndarray) -> "Inputs":
        """These inputs with only the ``kept`` train rows to fit on and the ``held`` rows as one more set."""
        train = {k: v for k, v in self.train.items() if k != "nac"}   # large, and no fitted base reads it
        return replace(self, train=take(train, kept), sets={**self.sets, HELD: take(train, held)}, layer_scores=None)

    def restricted(self, rows: Dict[str, Tuple[str, np.ndarray]]) -> "Inputs":
        """These inputs with only the sets of ``rows``, ``{name: (set it comes from, its rows)}`` (the train split
        is kept): the validation images, or the images that remain once they are held out."""
        sets = {n: take(self.sets[src], idx) for n, (src, idx) in rows.items()}
        scores = None if self.layer_scores is None else {n: self.layer_scores[src][idx] for n, (src, idx) in rows.items()}
        return replace(self, sets=sets, layer_scores=scores)


Grid = Union[Sequence[Any], Callable[[Inputs], Sequence[Any]]]


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Dict[str, np.ndarray]]
    needs: FrozenSet[str]
    reference: str                                        # the paper it follows
    defaults: Dict[str, Any] = field(default_factory=dict)  # hyperparameter -> default (from fn's signature)
    grid: Dict[str, Grid] = field(default_factory=dict)     # hyperparameter -> values --tune searches
    grid_source: str = ""                                   # where the grid comes from

    def missing(self, inputs: Inputs) -> List[str]:
        return sorted(self.needs - inputs.available())

    def score(self, inputs: Inputs, **values) -> Dict[str, np.ndarray]:
        """``{set: scores}`` at the defaults, with ``values`` overriding some hyperparameters."""
        unknown = set(values) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name} has no hyperparameter {sorted(unknown)}; it has {sorted(self.defaults) or 'none'}")
        return self.fn(inputs, **{**self.defaults, **values})

    def grid_points(self, inputs: Inputs) -> List[Dict[str, Any]]:
        """The defaults, then every other combination of the grid's values (resolved for ``inputs``); ``[{}]``
        for a method without a grid."""
        axes = {k: list(g(inputs) if callable(g) else g) for k, g in self.grid.items()}
        for k, values in axes.items():
            if not values:
                raise ValueError(f"{self.name}: the grid of {k} is empty for these inputs")
        points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        first = {k: self.defaults[k] for k in axes}
        return [first] + [p for p in points if p != first]


_METHODS: Dict[str, Method] = {}


def register_method(name: str, needs: Sequence[str], reference: str = "", grid: Optional[Dict[str, Grid]] = None,
                    grid_source: str = ""):
    """Decorator: register ``fn(inputs, **hyperparameters) -> {set: scores}`` under ``name`` (the name tables
    print). Every keyword argument of ``fn`` after ``inputs`` is a hyperparameter and needs a default;
    ``grid`` gives the values ``--tune`` tries for some of them (the others stay at their defaults)."""
    known = NEEDS | set(list_producers())
    unknown = set(needs) - known
    if unknown:
        raise ValueError(f"method {name!r} declares unknown needs {sorted(unknown)}; known: {sorted(known)}")
    grid = dict(grid or {})

    def wrap(fn):
        params = list(inspect.signature(fn).parameters.values())[1:]
        no_default = [p.name for p in params if p.default is inspect.Parameter.empty]
        if no_default:
            raise ValueError(f"method {name!r}: hyperparameters {no_default} need a default in the signature")
        defaults = {p.name: p.default for p in params}
        stray = set(grid) - set(defaults)
        if stray:
            raise ValueError(f"method {name!r}: grid for {sorted(stray)}, which are not arguments of its function")
        register(Method(name, fn, frozenset(needs), reference, defaults, grid, grid_source))
        return fn
    return wrap


def register(method: Method) -> Method:
    """Add a built :class:`Method` (what :func:`register_method` does for a decorated function)."""
    if method.name in _METHODS:
        raise ValueError(f"a scoring method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown scoring method {name!r}; choose from {', '.join(_METHODS)}")
    return _METHODS[name]


def is_layer_adaptive(name: str) -> bool:
    """Whether a registered method reads the per-layer detectors (LA-OOD and its variants); the rankings call
    the others its rivals."""
    return "detectors" in get_method(name).needs


_HOW = {**{p: f"run save_inter_outputs.py --{p}" for p in list_producers()},
        "nac_stages": "run save_inter_outputs.py --nac-stages", "calibration": "fit the detectors with --calibration-size N",
        "head": "run save_inter_outputs.py again: it saves the classifier head",
        "detectors": "run train_ood_detectors.py"}


def score_methods(names: Sequence[str], inputs: Inputs,
                  values: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Dict[str, np.ndarray]]:
    """``{method: {set: scores}}`` of every method in ``names`` whose needs ``inputs`` meets, each at its
    defaults or at ``values[method]``; the others are left out with a log line saying what they lack."""
    out = {}
    for name in names:
        method = get_method(name)
        missing = method.missing(inputs)
        if missing:
            log.info(f"{name} left out: it needs {', '.join(missing)} ({_HOW.get(missing[0], '')})")
            continue
        out[name] = method.score(inputs, **(values or {}).get(name, {}))
    return out


def standardise_on(scores: Dict[str, np.ndarray], key: str = HELD) -> Dict[str, np.ndarray]:
    """Every set's scores standardised by the mean and std of ``scores[key]`` (which is dropped)."""
    ref = scores.pop(key)
    std = ref.std() if ref.std() > 0 else 1.0
    return {n: (s - ref.mean()) / std for n, s in scores.items()}
