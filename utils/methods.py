"""Scoring methods: one registry entry per method, each turning saved features into per-image OOD scores.

Sign convention, as everywhere in this repository: **an OOD score is larger for more anomalous inputs**.

A method is a function ``fn(inputs) -> {set name: scores}`` registered with :func:`register_method`,
declaring what it needs from :class:`Inputs`:

    logits, penultimate, labels   saved by stage 2 for every set (labels: the train split's classes)
    layers                        the pooled per-layer features of stage 2
    head                          the classifier head (weight, bias) that the penultimate features feed
    odin                          ODIN scores stored by ``save_inter_outputs.py --odin``
    gram                          Gram deviations stored by ``save_inter_outputs.py --gram`` (utils/gram.py)
    nac                           NAC-UE's gradient quantities stored by ``save_inter_outputs.py --nac`` (utils/nac.py)
    detectors                     the fitted per-layer detectors' scores (stage 3)
    calibration                   the train images held back from the detectors, and their layer scores

Detection scores every registered method whose needs are met and says which it left out and why.
Everything fitted here is fitted on in-distribution train features; no choice looks at OOD data.
Adding a method is one decorated function here and its test.

Where pytorch-ood 0.4 implements a method, tests/test_methods_reference.py checks that the scores here
equal its scores on the same features (to 1e-5, or the same ranking where a score is defined up to a
monotone map).
"""
import logging
from dataclasses import dataclass, replace
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .detectors import Calibration, early_exit
from .splits import held_split

log = logging.getLogger(__name__)

NEEDS = frozenset({"logits", "penultimate", "labels", "layers", "head", "odin", "gram", "nac", "detectors",
                   "calibration"})
HELD = "__held__"        # the held-back train rows, scored as one more set when a score is standardised


class Rows:
    """Rows ``idx`` of a list of (memory-mapped) arrays, read only when a layer is asked for."""

    def __init__(self, arrays: Sequence[np.ndarray], idx: np.ndarray):
        self.arrays, self.idx = arrays, idx

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.arrays[i][self.idx])


def take(features: Dict, idx: np.ndarray) -> Dict:
    """The rows ``idx`` of a set's features (``layers`` stay lazy)."""
    out = {k: np.asarray(features[k][idx]) for k in ("logits", "penultimate", "labels") if k in features}
    if "layers" in features:
        out["layers"] = Rows(features["layers"], idx)
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
        if self.sets and all("odin" in f for f in self.sets.values()):
            have.add("odin")
        if self.sets and all("gram" in f for f in self.sets.values()) and "gram_bounds" in self.train:
            have.add("gram")
        if self.sets and all("nac" in f for f in [self.train, *self.sets.values()]):
            have.add("nac")
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
        return replace(self, train=take(self.train, kept), sets={**self.sets, HELD: take(self.train, held)},
                       layer_scores=None)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[[Inputs], Dict[str, np.ndarray]]
    needs: FrozenSet[str]
    reference: str            # the paper it follows

    def missing(self, inputs: Inputs) -> List[str]:
        return sorted(self.needs - inputs.available())


_METHODS: Dict[str, Method] = {}


def register_method(name: str, needs: Sequence[str], reference: str = ""):
    """Decorator: register ``fn(inputs) -> {set: scores}`` under ``name`` (the name tables print)."""
    unknown = set(needs) - NEEDS
    if unknown:
        raise ValueError(f"method {name!r} declares unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")

    def wrap(fn):
        if name in _METHODS:
            raise ValueError(f"a scoring method named {name!r} is already registered")
        _METHODS[name] = Method(name, fn, frozenset(needs), reference)
        return fn
    return wrap


def list_methods() -> List[str]:
    return list(_METHODS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown scoring method {name!r}; choose from {', '.join(_METHODS)}")
    return _METHODS[name]


def score_methods(names: Sequence[str], inputs: Inputs) -> Dict[str, Dict[str, np.ndarray]]:
    """``{method: {set: scores}}`` of every method in ``names`` whose needs ``inputs`` meets; the others
    are left out with a log line saying what they lack."""
    out = {}
    for name in names:
        method = get_method(name)
        missing = method.missing(inputs)
        if missing:
            log.info(f"{name} left out: it needs {', '.join(missing)} ({_HOW.get(missing[0], '')})")
            continue
        out[name] = method.fn(inputs)
    return out


_HOW = {"odin": "run save_inter_outputs.py --odin", "gram": "run save_inter_outputs.py --gram",
        "nac": "run save_inter_outputs.py --nac", "calibration": "fit the detectors with --calibration-size N",
        "head": "run save_inter_outputs.py again: it saves the classifier head",
        "detectors": "run train_ood_detectors.py"}


# ----------------------------------------------------------------------------- building blocks

def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def msp(logits: np.ndarray) -> np.ndarray:
    return -torch.softmax(_t(logits), 1).max(1).values.numpy()


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return (-temperature * torch.logsumexp(_t(logits) / temperature, 1)).numpy()


def linear(features: np.ndarray, head: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    weight, bias = head
    return np.asarray(features, dtype=np.float64) @ weight.T + bias


def standardise_on(scores: Dict[str, np.ndarray], key: str = HELD) -> Dict[str, np.ndarray]:
    """Every set's scores standardised by the mean and std of ``scores[key]`` (which is dropped)."""
    ref = scores.pop(key)
    std = ref.std() if ref.std() > 0 else 1.0
    return {n: (s - ref.mean()) / std for n, s in scores.items()}


class Mahalanobis:
    """Class-conditional Gaussians with one shared covariance (Lee et al., NeurIPS 2018); the score is
    the smallest squared Mahalanobis distance to a class mean (no input noise, no layer weights)."""

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> "Mahalanobis":
        X = np.asarray(feats, dtype=np.float64)
        self.classes_ = np.unique(labels)
        self.means_ = np.stack([X[labels == c].mean(0) for c in self.classes_])
        centred = X - self.means_[np.searchsorted(self.classes_, labels)]
        self.precision_ = np.linalg.pinv(centred.T @ centred / len(X), hermitian=True)
        return self

    def score(self, feats: np.ndarray) -> np.ndarray:
        # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm, as matrix products: no (N, C, D) intermediate.
        X = np.asarray(feats, dtype=np.float64)
        XP = X @ self.precision_
        mP = self.means_ @ self.precision_
        dist = (XP * X).sum(1)[:, None] - 2 * XP @ self.means_.T + (mP * self.means_).sum(1)[None]
        return np.maximum(dist, 0).min(1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KNN:
    """Distance to the k-th nearest L2-normalised train feature (Sun et al., ICML 2022), through faiss's
    exact inner-product index where faiss is installed, else exact torch matrix products (same scores)."""

    def __init__(self, k: int = 50, backend: str = "auto"):
        self.k, self.backend = k, backend

    def fit(self, feats: np.ndarray) -> "KNN":
        self.train_ = _unit(feats)
        backend = self.backend
        if backend == "auto":
            backend = "faiss" if _faiss() is not None else "torch"
        if backend == "faiss":
            faiss = _faiss()
            if faiss is None:
                raise ValueError("KNN backend 'faiss' asked for, but faiss is not installed (pip install faiss-cpu)")
            self.index_ = faiss.IndexFlatIP(self.train_.shape[1])
            self.index_.add(self.train_)
        self.backend_ = backend
        return self

    def score(self, feats: np.ndarray, chunk: int = 2048) -> np.ndarray:
        q = _unit(feats)
        out = []
        for s in range(0, len(q), chunk):
            if self.backend_ == "faiss":
                _, idx = self.index_.search(q[s:s + chunk], self.k)
            else:
                sim = torch.from_numpy(q[s:s + chunk]) @ torch.from_numpy(self.train_).T
                idx = sim.topk(self.k, dim=1).indices.numpy()
            # The neighbour is found in float32; its distance is taken in float64, since sqrt(2 - 2 a.b)
            # loses digits for close neighbours.
            diff = q[s:s + chunk, None, :].astype(np.float64) - self.train_[idx[:, -1:]].astype(np.float64)
            out.append(np.linalg.norm(diff[:, 0], axis=1))
        return np.concatenate(out)


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def react_threshold(train_penultimate: np.ndarray, percentile: float = 90) -> float:
    """ReAct's clipping level: the ``percentile`` of all in-distribution train activations."""
    return float(np.percentile(np.asarray(train_penultimate, dtype=np.float64), percentile))


def ash_s(features: np.ndarray, percentile: float = 90) -> np.ndarray:
    """ASH-S (Djurisic et al., ICLR 2023): zero each image's activations below its ``percentile``, then
    scale the rest by exp(sum before / sum after)."""
    x = _t(features)
    k = x.shape[1] - int(np.round(x.shape[1] * percentile / 100.0))       # activations kept per image
    values, idx = x.topk(k, dim=1)
    pruned = torch.zeros_like(x).scatter_(1, idx, values).numpy()
    scale = x.sum(1).numpy() / np.maximum(pruned.sum(1), 1e-12)
    return pruned * np.exp(scale)[:, None]


def dice_weight(train_penultimate: np.ndarray, head, p: float = 90) -> np.ndarray:
    """DICE (Sun and Li, ECCV 2022): keep the head's weights whose contribution (weight times the mean
    train activation) is above its ``p``-th percentile, zero the rest."""
    weight, _ = head
    contribution = np.asarray(train_penultimate, dtype=np.float64).mean(0)[None, :] * weight
    return np.where(contribution > np.quantile(contribution, p / 100.0), weight, 0.0)


def vim_dim(width: int) -> int:
    """ViM's principal-subspace dimension (Wang et al., CVPR 2022): 1000 for features of 1500 or more
    dimensions, 512 from 768, half the width below."""
    return 1000 if width >= 1500 else 512 if width >= 768 else width // 2


class ViM:
    """Virtual-logit matching: OOD score = alpha ||x_res|| - logsumexp(logits), where x_res is the feature,
    centred at u = -pinv(W) b, outside the top-``dim`` principal subspace of the train features, and
    alpha = mean train max-logit / mean train ||x_res||."""

    def __init__(self, head, dim: Optional[int] = None):
        self.head, self.dim = head, dim

    def fit(self, feats: np.ndarray) -> "ViM":
        weight, bias = self.head
        X = np.asarray(feats, dtype=np.float64)
        self.dim_ = self.dim or vim_dim(X.shape[1])
        self.origin_ = -np.linalg.pinv(weight) @ bias
        centred = X - self.origin_
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(X))
        self.residual_ = eigvecs[:, np.argsort(eigvals)[::-1][self.dim_:]]
        self.alpha_ = linear(X, self.head).max(1).mean() / self._residual_norm(X).mean()
        return self

    def _residual_norm(self, X: np.ndarray) -> np.ndarray:
        return np.linalg.norm((np.asarray(X, dtype=np.float64) - self.origin_) @ self.residual_, axis=1)

    def score(self, feats: np.ndarray) -> np.ndarray:
        return self.alpha_ * self._residual_norm(feats) + energy(linear(feats, self.head))


def gen(logits: np.ndarray, gamma: float = 0.1, m: int = 10) -> np.ndarray:
    """GEN (Liu et al., CVPR 2023): the generalised entropy sum_j p_j^g (1 - p_j)^g of the ``m`` largest
    softmax probabilities (clamped to [1e-7, 1 - 1e-7]); larger for flatter predictions."""
    p = torch.softmax(_t(logits), 1).clamp(1e-7, 1 - 1e-7)
    p = p.sort(1, descending=True).values[:, :m]
    return (p ** gamma * (1 - p) ** gamma).sum(1).numpy()


# ----------------------------------------------------------------------------- LA-OOD and its variants

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


def _tail_plus(base: str, needs: Sequence[str]):
    """LA-OOD tail + ``base``: the ``base`` score standardised on the train images held back from the
    detectors, plus the largest excess of any layer's standardised score beyond that layer's
    in-distribution 99th percentile (:meth:`Calibration.tail_excess`). ``base`` is fitted on the other
    train images, so the held-back ones are unseen by it as by the detectors. The rule and its constants
    (0.99, standardisation on the held-back images) were fixed with the Energy variant before any of the
    other bases was measured."""
    def fn(inp: Inputs):
        held = np.asarray(inp.calibration.held)
        kept = np.setdiff1d(np.arange(len(inp.train["logits"])), held, assume_unique=True)
        z = standardise_on(get_method(base).fn(inp.fitted_on(kept, held)))
        return {n: z[n] + inp.calibration.tail_excess(s) for n, s in inp.layer_scores.items()}
    register_method(f"LA-OOD tail + {base}", ["detectors", "calibration", *needs], "this repository")(fn)
    return fn


# ----------------------------------------------------------------------------- post-hoc baselines

@register_method("MSP", ["logits"], "Hendrycks and Gimpel, ICLR 2017")
def _msp(inp: Inputs):
    return inp.each(lambda f: msp(f["logits"]))


@register_method("ODIN", ["odin"], "Liang et al., ICLR 2018; T = 1000, eps = 0.0014, computed in stage 2")
def _odin(inp: Inputs):
    return inp.each(lambda f: f["odin"])


@register_method("Energy", ["logits"], "Liu et al., NeurIPS 2020; T = 1")
def _energy(inp: Inputs):
    return inp.each(lambda f: energy(f["logits"]))


@register_method("GEN", ["logits"], "Liu et al., CVPR 2023; gamma 0.1, M = 10")
def _gen(inp: Inputs):
    return inp.each(lambda f: gen(f["logits"], 0.1, 10))


@register_method("ReAct", ["penultimate", "head"], "Sun et al., NeurIPS 2021; clip at the 90th percentile")
def _react(inp: Inputs):
    c = react_threshold(inp.train["penultimate"], 90)
    return inp.each(lambda f: energy(linear(np.minimum(f["penultimate"], c), inp.head)))


@register_method("ASH-S", ["penultimate", "head"], "Djurisic et al., ICLR 2023; pruning percentile 90")
def _ash(inp: Inputs):
    return inp.each(lambda f: energy(linear(ash_s(f["penultimate"], 90), inp.head)))


@register_method("DICE", ["penultimate", "head"], "Sun and Li, ECCV 2022; sparsity p = 90")
def _dice(inp: Inputs):
    sparse = (dice_weight(inp.train["penultimate"], inp.head, 90), inp.head[1])
    return inp.each(lambda f: energy(linear(f["penultimate"], sparse)))


@register_method("ViM", ["penultimate", "head"], "Wang et al., CVPR 2022; the paper's subspace rule")
def _vim(inp: Inputs):
    vim = ViM(inp.head).fit(inp.train["penultimate"])
    return inp.each(lambda f: vim.score(f["penultimate"]))


@register_method("Mahalanobis", ["penultimate", "labels"], "Lee et al., NeurIPS 2018; penultimate layer")
def _mahalanobis(inp: Inputs):
    maha = Mahalanobis().fit(inp.train["penultimate"], inp.train["labels"])
    return inp.each(lambda f: maha.score(f["penultimate"]))


@register_method("Mahalanobis (all layers)", ["layers", "labels"],
                 "Lee et al., NeurIPS 2018; every tapped layer, standardised on held-back train images, summed")
def _mahalanobis_layers(inp: Inputs):
    held, kept = inp.held_split()
    labels = np.asarray(inp.train["labels"])
    total = {n: 0.0 for n in inp.sets}
    for i in range(len(inp.train["layers"])):
        maha = Mahalanobis().fit(np.asarray(inp.train["layers"][i][kept]), labels[kept])
        per_set = {n: maha.score(f["layers"][i]) for n, f in inp.sets.items()}
        per_set[HELD] = maha.score(np.asarray(inp.train["layers"][i][held]))
        for n, z in standardise_on(per_set).items():
            total[n] = total[n] + z
    return total


@register_method("Gram", ["gram"], "Sastry and Oore, ICML 2020; poles 1-10, every tapped layer")
def _gram(inp: Inputs):
    bounds = inp.train["gram_bounds"]
    return inp.each(lambda f: bounds.score(f["gram"]))


@register_method("KNN", ["penultimate"], "Sun et al., ICML 2022; k = 50, faiss where installed")
def _knn(inp: Inputs):
    knn = KNN(k=50).fit(inp.train["penultimate"])
    return inp.each(lambda f: knn.score(f["penultimate"]))


# ----------------------------------------------------------------------------- the field's 2023-2025 leaders
# Computed by pytorch-ood 0.4's implementations where they fit (RMDS aside, see its docstring) (its detectors' fit_features / predict_features on the saved
# penultimate features and head, in chunks), which score 50,000 train features in seconds and small memory.

def _head_module(head, dtype=torch.float32) -> torch.nn.Linear:
    weight, bias = head
    linear_layer = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(dtype)
    with torch.no_grad():
        linear_layer.weight.copy_(torch.as_tensor(weight))
        linear_layer.bias.copy_(torch.as_tensor(bias))
    return linear_layer


def _tensor(a, dtype=torch.float32) -> torch.Tensor:
    """A tensor copy of (a slice of) a possibly read-only memory map."""
    return torch.tensor(np.asarray(a), dtype=dtype)


def _chunked(fn, feats: np.ndarray, dtype=torch.float32, chunk: int = 8192) -> np.ndarray:
    """``fn`` (features tensor -> scores tensor) over ``feats`` in chunks, as float64 numbers."""
    feats = np.asarray(feats)
    out = [fn(_tensor(feats[s:s + chunk], dtype)).double().numpy() for s in range(0, len(feats), chunk)]
    return np.concatenate(out) if out else np.zeros(0)


@register_method("fDBD", ["penultimate", "head"], "Liu and Qin, ICML 2024; hyperparameter-free")
def _fdbd(inp: Inputs):
    from pytorch_ood.detector import fDBD
    det = fDBD(None, _head_module(inp.head)).fit_features(_tensor(inp.train["penultimate"]))
    return inp.each(lambda f: _chunked(det.predict_features, f["penultimate"]))


@register_method("RMDS", ["penultimate", "labels"], "Ren et al., 2021 (relative Mahalanobis); no hyperparameters")
def _rmds(inp: Inputs):
    """min_k d_k(z) - d_0(z): the class-conditional Mahalanobis distance relative to one background Gaussian of
    all train features. Written here rather than called from pytorch-ood for float64 accuracy: pytorch-ood's
    ``RMD`` works in float32 and inverts the unnormalised covariance with ``inv``, which features with dead
    units (VGG16's penultimate layer has some) make singular; this uses the pseudo-inverse in float64, as
    the Mahalanobis entry does."""
    X, labels = inp.train["penultimate"], np.asarray(inp.train["labels"])
    classes = Mahalanobis().fit(X, labels)
    background = Mahalanobis().fit(X, np.zeros_like(labels))
    return inp.each(lambda f: classes.score(f["penultimate"]) - background.score(f["penultimate"]))


@register_method("SCALE", ["penultimate", "head"], "Xu et al., ICLR 2024; percentile 85 (OpenOOD's CIFAR default)")
def _scale(inp: Inputs):
    from pytorch_ood.detector.scale import scale
    scaled = lambda f: scale(_tensor(f["penultimate"], torch.float64)[:, :, None, None], 0.85).flatten(1).numpy()  # noqa: E731
    return inp.each(lambda f: energy(linear(scaled(f), inp.head)))


@register_method("NCI", ["penultimate", "head"], "Liu and Qin, CVPR 2025; alpha = 0 (no norm term: its weight "
                 "is tuned on OOD data in the paper)")
def _nci(inp: Inputs):
    from pytorch_ood.detector import NCI
    det = NCI(None, _head_module(inp.head), alpha=0.0).fit_features(_tensor(inp.train["penultimate"]))
    return inp.each(lambda f: _chunked(det.predict_features, f["penultimate"]))


@register_method("NAC-UE", ["nac"], "Liu et al., ICLR 2024; the taps of --nac (all, or --nac-taps), pytorch-ood's "
                                    "alpha 100, M 50, O* 50")
def _nac_ue(inp: Inputs):
    from .nac import Coverage
    taps = inp.train.get("nac_taps")
    for name, f in inp.sets.items():
        if f.get("nac_taps") != taps:
            raise ValueError(f"NAC-UE: set {name!r} has NAC values of other taps than the train split "
                             f"({f.get('nac_taps')} against {taps}); rerun save_inter_outputs.py --force with one "
                             f"--nac-taps for every set")
    coverage = Coverage(inp.train["nac_widths"]).fit(inp.train["nac"])
    return inp.each(lambda f: coverage.score(f["nac"]))


NNGUIDE_BANK, NNGUIDE_K = 0.01, 100   # a seeded 1% of the train features as the bank, k = 100 (as OpenOOD)


@register_method("NNGuide", ["penultimate", "head", "labels"], "Park et al., ICCV 2023; bank 1% of train, k = 100")
def _nnguide(inp: Inputs):
    from pytorch_ood.detector import NNGuide
    n = len(inp.train["penultimate"])
    bank = held_split(n, max(NNGUIDE_K, int(NNGUIDE_BANK * n)), inp.seed)[0]
    det = NNGuide(None, _head_module(inp.head), k=NNGUIDE_K).fit_features(
        _tensor(inp.train["penultimate"][bank]), torch.as_tensor(np.asarray(inp.train["labels"])[bank]))
    return inp.each(lambda f: _chunked(det.predict_features, f["penultimate"]))


# The tail rule over stronger scores than energy, each its own row (registered after their bases).
_tail_plus("Energy", ["logits"])
_tail_plus("ViM", ["penultimate", "head"])
_tail_plus("KNN", ["penultimate"])
_tail_plus("ReAct", ["penultimate", "head"])
