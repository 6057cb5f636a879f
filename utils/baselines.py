"""Post-hoc OOD baselines on the same backbone; every score is larger for more anomalous inputs.

- MSP (Hendrycks & Gimpel, ICLR 2017): minus the maximum softmax probability.
- ODIN (Liang et al., ICLR 2018): MSP at temperature 1000 after an input perturbation of 0.0014, both fixed.
- Energy (Liu et al., NeurIPS 2020): the free energy -T logsumexp(logits / T), T = 1.
- Mahalanobis (Lee et al., NeurIPS 2018): the minimum over classes of the Mahalanobis distance of the
  penultimate features to the class means under one shared covariance (no input noise, no layer weights).
- KNN (Sun et al., ICML 2022): the distance to the k-th nearest L2-normalised train feature, k = 50.
None of them uses OOD data for any choice.
"""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .data import IMAGENET_STD, to_input


def msp(logits: np.ndarray) -> np.ndarray:
    return -torch.softmax(torch.tensor(np.asarray(logits), dtype=torch.float64), 1).max(1).values.numpy()


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = torch.tensor(np.asarray(logits), dtype=torch.float64)
    return (-temperature * torch.logsumexp(z / temperature, 1)).numpy()


class Mahalanobis:
    """Class-conditional Gaussians with a shared covariance, fitted on penultimate train features."""

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> "Mahalanobis":
        X = np.asarray(feats, dtype=np.float64)
        self.classes_ = np.unique(labels)
        self.means_ = np.stack([X[labels == c].mean(0) for c in self.classes_])
        centred = X - self.means_[np.searchsorted(self.classes_, labels)]
        cov = centred.T @ centred / len(X)
        self.precision_ = np.linalg.pinv(cov, hermitian=True)
        return self

    def score(self, feats: np.ndarray) -> np.ndarray:
        # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm, as matrix products: no (N, C, D) intermediate.
        X = np.asarray(feats, dtype=np.float64)
        XP = X @ self.precision_
        mP = self.means_ @ self.precision_
        dist = (XP * X).sum(1)[:, None] - 2 * XP @ self.means_.T + (mP * self.means_).sum(1)[None]
        return np.maximum(dist, 0).min(1)


class KNN:
    """Distance to the k-th nearest L2-normalised train feature."""

    def __init__(self, k: int = 50):
        self.k = k

    def fit(self, feats: np.ndarray) -> "KNN":
        self.train_ = torch.as_tensor(_normalise(feats))
        return self

    def score(self, feats: np.ndarray, chunk: int = 2048) -> np.ndarray:
        q = torch.as_tensor(_normalise(feats))
        out = []
        for s in range(0, len(q), chunk):
            # ||a - b||^2 = 2 - 2 a.b for unit vectors: the k-th largest similarity is the k-th nearest.
            sim = q[s:s + chunk] @ self.train_.T
            kth = sim.topk(self.k, dim=1).values[:, -1]
            out.append(torch.sqrt((2 - 2 * kth).clamp_min(0)))
        return torch.cat(out).numpy()


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def odin(model, images: np.ndarray, device: torch.device, temperature: float = 1000.0, epsilon: float = 0.0014,
         batch_size: int = 256, progress: Optional[str] = None) -> np.ndarray:
    """ODIN as in the authors' released code: perturb the normalised input against the gradient of the
    tempered cross-entropy with the predicted label, the sign of the gradient divided per channel by the
    normalisation std, times ``epsilon``; score = minus the max tempered softmax of the perturbed input."""
    from tqdm import tqdm
    model.eval()
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    scores = []
    for s in tqdm(range(0, len(images), batch_size), desc=progress or "odin", leave=False, disable=progress is None):
        x = to_input(images[s:s + batch_size], device).requires_grad_(True)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, logits.argmax(1))
        grad, = torch.autograd.grad(loss, x)
        x_pert = x.detach() - epsilon * grad.sign() / std
        with torch.no_grad():
            scores.append(-torch.softmax(model(x_pert) / temperature, 1).max(1).values.cpu())
    return torch.cat(scores).double().numpy()
