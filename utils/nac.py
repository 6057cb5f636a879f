"""NAC-UE (neuron activation coverage; Liu et al., ICLR 2024), which needs the network's gradients: stage 2
(``save_inter_outputs.py --nac``) stores, for every tapped layer's output z and every image, the spatial mean
of ``z * dKL/dz`` per channel, KL being the divergence of the softmax from the uniform distribution; the
``NAC-UE (pytorch-ood)`` scoring method (utils/methods/multilayer.py) turns those into coverage scores with :func:`coverage_scores`.

The quantities, bins and coverage follow pytorch-ood 0.4's ``NACUE`` (whose scores
tests/test_methods_reference.py compares with these): a neuron's state is ``sigmoid(alpha * value)``, put in
one of ``m`` geometric bins on (0, 1) (dense near 0 and 1); fitting counts each bin's in-distribution train
states; an image's coverage of a layer is the mean over its neurons of ``min(count of its bin / o_star, 1)``,
summed over layers; the OOD score is minus that sum. alpha = 100, m = 50, o_star = 50: pytorch-ood's
defaults, not tuned on OOD data here.

``--nac-taps`` restricts the quantities to some of the taps (:func:`select_taps`): the backward pass then
stops at the earliest of them, which is what makes NAC affordable on deep networks whose first taps sit at
full resolution (DenseNet100: docs/results.md).
"""
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .hooks import frozen_with_hooks
from .inputs import normalization_of, to_input

ALPHA, BINS, O_STAR = 100.0, 50, 50


def select_taps(spec: Optional[str], names: Sequence[str]) -> List[int]:
    """Tap indices named by ``spec``, in order, without repeats: comma-separated items, each an index, a tap
    name, or a range ``start:stop`` of either (stop exclusive, either end may be left out, as in Python).
    ``None`` or ``"all"``: every tap.

    >>> select_taps("trans2.conv1:", ["conv1", "trans1.conv1", "trans2.conv1", "fc"])
    [2, 3]
    """
    if spec is None or spec.strip() == "all":
        return list(range(len(names)))

    def index(item: str, end: bool = False) -> int:
        item = item.strip()
        if item == "":
            return len(names) if end else 0
        if item.lstrip("-").isdigit():
            i = int(item)
            i = i + len(names) if i < 0 else i
            if not 0 <= i <= len(names) - (0 if end else 1):
                raise ValueError(f"--nac-taps: tap index {item} is out of range; this model has {len(names)} "
                                 f"taps (0 to {len(names) - 1})")
            return i
        if item not in names:
            raise ValueError(f"--nac-taps: no tap named {item!r}; this model's {len(names)} taps are "
                             f"{', '.join(names[:3])}, ..., {names[-1]} (`python -c \"from models import "
                             f"create_model; print(create_model('ARCH').tap_names)\"` lists them all), or give "
                             f"indices")
        return names.index(item)

    chosen: List[int] = []
    for item in spec.split(","):
        if ":" in item:
            start, stop = item.split(":", 1)
            picked = range(index(start), index(stop, end=True))
        else:
            picked = [index(item)]
        chosen += [i for i in picked if i not in chosen]
    if not chosen:
        raise ValueError(f"--nac-taps {spec!r} selects no tap; give e.g. 'all', '10:' or '3,7,fc'")
    return sorted(chosen)


def nac_values(model, images: np.ndarray, device: torch.device, batch_size: int = 256,
               progress: Optional[str] = None, taps: Optional[Sequence[int]] = None,
               on_batch: Optional[Callable] = None) -> np.ndarray:
    """``(N, sum of the chosen taps' widths)`` float32: per image and tapped channel, the spatial mean of
    ``z * dKL/dz`` (the taps in ``taps``, default all, in order, each ``model.tap_widths[i]`` columns).

    One forward and one backward pass per batch. The parameters are frozen for the pass and the graph starts
    at the first chosen tap (a tap output that nothing before it made differentiable is joined to the graph
    by adding a zero that requires grad), so the layers before it run as in plain inference and the backward
    reaches only as deep as that tap: the same gradients, at the cost of the chosen part of the network.

    ``on_batch(start, stop, intermediates)``: the forward pass is then ``model.forward_intermediates`` (every
    tap pooled, the logits and the penultimate features; tensors that may require grad, to be detached), and
    this sees each batch's, so stage 2 saves the features from the same forward (``extract_with_nac``)."""
    model.eval()
    norm = normalization_of(model)
    captured: List[torch.Tensor] = []
    anchor = torch.zeros((), device=device, requires_grad=True)

    def capture(_module, _inputs, out):
        if not out.requires_grad:
            out = out + anchor
        captured.append(out)
        return out

    modules = list(model.tap_modules)
    chosen = range(len(modules)) if taps is None else taps
    out = []
    with frozen_with_hooks(model, [(modules[i], capture) for i in chosen]):
        for s in tqdm(range(0, len(images), batch_size), desc=progress or "nac", leave=False,
                      disable=progress is None):
            captured.clear()
            x = to_input(images[s:s + batch_size], device, normalization=norm)
            with torch.enable_grad():
                o = model.forward_intermediates(x, penultimate=True) if on_batch is not None else None
                p = torch.softmax(model(x) if o is None else o.logits, dim=1)
                loss = (-torch.log(p + 1e-12).mean(dim=1)).sum()     # KL(u || p) up to a constant, per image
                grads = torch.autograd.grad(loss, captured)
            out.append(torch.cat([_reduce(z.detach() * g) for z, g in zip(captured, grads)], 1).float().cpu())
            if on_batch is not None:
                on_batch(s, s + len(x), o)
    return torch.cat(out).numpy()


def _reduce(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(2, 3)) if t.ndim == 4 else t.flatten(1)


def geometric_bins(states: torch.Tensor, m: int = BINS, eps: float = 1e-6) -> torch.Tensor:
    """Bin index in [0, m) of states in (0, 1): m // 2 log-spaced bins from eps to 0.5, mirrored above it."""
    z = states.clamp(eps, 1 - eps)
    left = torch.logspace(torch.log10(torch.tensor(eps)), torch.log10(torch.tensor(0.5)), steps=m // 2 + 1)
    edges = torch.cat([left, (1.0 - left.flip(0))[1:]])
    return (torch.bucketize(z, edges, right=False) - 1).clamp(0, m - 1).long()


def _bins(values: np.ndarray, alpha: float, m: int) -> torch.Tensor:
    # a copy: values may be a read-only memory map, which torch would wrap with a warning
    return geometric_bins(torch.sigmoid(alpha * torch.from_numpy(np.array(values, dtype=np.float32))), m)


class Coverage:
    """Per-neuron histograms of the in-distribution states (``fit``) and the coverage score (``score``)."""

    def __init__(self, widths: Sequence[int], alpha: float = ALPHA, m: int = BINS, o_star: int = O_STAR):
        self.widths, self.alpha, self.m, self.o_star = list(widths), alpha, m, o_star

    def _layers(self, values: np.ndarray):
        start = 0
        for w in self.widths:
            yield values[:, start:start + w]
            start += w

    def fit(self, train_values: np.ndarray, chunk: int = 4096) -> "Coverage":
        self.counts_ = [torch.zeros(w * self.m, dtype=torch.long) for w in self.widths]
        for s in range(0, len(train_values), chunk):
            for counts, v in zip(self.counts_, self._layers(np.asarray(train_values[s:s + chunk]))):
                idx = _bins(v, self.alpha, self.m) + torch.arange(v.shape[1]) * self.m
                counts.scatter_add_(0, idx.flatten(), torch.ones(idx.numel(), dtype=torch.long))
        return self

    def score(self, values: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Minus the coverage summed over layers: larger for more anomalous images."""
        out = []
        for s in range(0, len(values), chunk):
            total = 0.0
            for counts, v in zip(self.counts_, self._layers(np.asarray(values[s:s + chunk]))):
                idx = _bins(v, self.alpha, self.m) + torch.arange(v.shape[1]) * self.m
                total = total + torch.clamp(counts[idx].float() / self.o_star, max=1.0).mean(dim=1)
            out.append(-total.double().numpy())
        return np.concatenate(out) if out else np.zeros(0)
