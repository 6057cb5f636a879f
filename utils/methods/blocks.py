"""Building blocks of the scoring methods: scores and fitted models that the registered methods compose
(each a plain function or a small class with ``fit`` / ``score``, usable on its own)."""
from typing import Optional, Tuple

import numpy as np
import torch


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def msp(logits: np.ndarray) -> np.ndarray:
    return -torch.softmax(_t(logits), 1).max(1).values.numpy()


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return (-temperature * torch.logsumexp(_t(logits) / temperature, 1)).numpy()


def linear(features: np.ndarray, head: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    weight, bias = head
    return np.asarray(features, dtype=np.float64) @ weight.T + bias



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


