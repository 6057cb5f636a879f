"""Co-training: fine-tune the backbone with the per-layer One-Class SVMs' decision values as a reward.

loss = CE - lambda * D,  D = 1 / (2 |S|) * sum_{l in S} sum_{x in batch} sum_j alpha_j exp(-gamma ||z_l(x) - s_j||^2)

where z_l(x) is layer l's pooled feature standardised with the mean and standard deviation of the
current model's train features (recomputed at the start of every epoch), and s_j, alpha_j, gamma are
the fitted detector's support vectors, dual coefficients and kernel width. D is a sum over the batch,
not a mean, as in the original: it sets the scale of lambda.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from .inputs import normalization_of, to_input
from .detectors.torch_scoring import OCSVMDecision


class CoTrainLoss(nn.Module):
    """The co-training loss over a model's taps, with per-layer standardisation statistics as buffers."""

    def __init__(self, model: nn.Module, detectors: Sequence[Pipeline], lam: float = 0.001,
                 layers_per_batch: Optional[int] = None, ce_weight: float = 1.0):
        super().__init__()
        if len(detectors) != model.num_taps:
            raise ValueError(f"{len(detectors)} detectors given, but {model.arch} has {model.num_taps} layers: "
                             f"were they fitted for another model?")
        for i, (det, width) in enumerate(zip(detectors, model.tap_widths)):
            if det[-1].n_features_in_ != width:
                raise ValueError(f"detector of layer {i} expects {det[-1].n_features_in_} features, but "
                                 f"{model.arch}'s layer {i} has {width}: the detectors belong to another model")
        self.model = model
        self.kernels = nn.ModuleList(OCSVMDecision(det[-1]) for det in detectors)
        self.lam, self.ce_weight = lam, ce_weight
        n = model.num_taps
        self.layers_per_batch = min(layers_per_batch or n, n)
        self.means: List[torch.Tensor] = [torch.zeros(w) for w in model.tap_widths]
        self.stds: List[torch.Tensor] = [torch.ones(w) for w in model.tap_widths]

    @torch.no_grad()
    def refresh_statistics(self, images, device: torch.device, batch_size: int = 500, progress: bool = True):
        """Mean and (population) standard deviation of every tap over ``images``, from the current model."""
        self.model.eval()
        sums = sq = None
        for start in tqdm(range(0, len(images), batch_size), desc="feature statistics", leave=False,
                          disable=not progress):
            feats = self.model.forward_intermediates(
                to_input(images[start:start + batch_size], device, normalization=normalization_of(self.model))).features
            f64 = [f.double() for f in feats]
            sums = [f.sum(0) for f in f64] if sums is None else [s + f.sum(0) for s, f in zip(sums, f64)]
            sq = [f.pow(2).sum(0) for f in f64] if sq is None else [s + f.pow(2).sum(0) for s, f in zip(sq, f64)]
        n = len(images)
        self.means = [(s / n).float() for s in sums]
        var = [(q / n - (s / n) ** 2).clamp_min(0) for s, q in zip(sums, sq)]
        self.stds = [torch.where(v > 0, v.sqrt(), torch.ones_like(v)).float() for v in var]

    def decision(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None):
        """``(logits, D)``: D summed over the batch and averaged (with the 1/2) over the chosen layers."""
        layers = list(range(self.model.num_taps)) if layers is None else list(layers)
        out = self.model.forward_intermediates(x, layers=layers)
        with torch.autocast(x.device.type, enabled=False):   # the RBF kernel needs float32
            total = sum(self.kernels[l]((f.float() - self.means[l].to(f.device)) / self.stds[l].to(f.device)).sum()
                        for l, f in zip(layers, out.features))
        return out.logits, total / (2 * len(layers))

    def forward(self, model, x: torch.Tensor, y: torch.Tensor):
        n = self.model.num_taps
        layers = None
        if self.layers_per_batch < n:   # deeper networks: a random subset of layers per batch
            layers = sorted(torch.randperm(n)[:self.layers_per_batch].tolist())
        logits, d = self.decision(x, layers)
        loss = -self.lam * d
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits.float(), y)
        return loss, logits


def mean_decision(loss: CoTrainLoss, images, device, batch_size: int = 500) -> float:
    """Mean per-image, per-layer decision value over ``images`` (a co-training progress measure)."""
    total = 0.0
    loss.model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            _, d = loss.decision(to_input(np.asarray(images[start:start + batch_size]), device,
                                          normalization=normalization_of(loss.model)))
            total += 2 * d.item()
    return total / len(images)
