"""NAC-UE as its authors compute it (Liu et al., ICLR 2024; their released code's OpenOOD postprocessor), written
here from its description, next to pytorch-ood's convention in utils/nac.py.

What differs from pytorch-ood's ``NACUE`` (utils/nac.py), each of which moves the scores a lot:

- **Layers**: ResNet-18 on CIFAR-10 in the authors' setting uses layer1, layer2 and layer3 (outputs at 32x32,
  16x16 and 8x8) and avgpool (the pooled features the head reads); the CIFAR ResNet-20/56 here have three stages
  at those same resolutions, and ResNet34 has ResNet-18's four, so all three read layer1-3 and the pooled
  features (:func:`default_stages`). For VGG16 the outputs of its first four blocks (the max-pooling layers
  ``features.6`` to ``features.33``) and for DenseNet100 its transitions (``trans1``, ``trans2``) stand for the
  stages; ``--nac-stages`` names other modules. Layers beyond the fourth take the fourth's setting.
- **State of a neuron**: the loss is the cross-entropy of the softmax against the uniform distribution,
  summed over the batch; with o a layer's output and g its gradient, each is **summed** over the spatial
  positions, and channel c's state is ``sigmoid(alpha * sum(o_c) * sum(g_c))``. Stage 2 stores the product
  ``sum(o_c) * sum(g_c)`` (:func:`stage_products`); alpha is applied at scoring, so it can be searched on saved
  values. For the pooled features the gradient is ``W^T (softmax(logits) - 1/C)``, computed from the saved
  penultimate features and head (:func:`pooled_products`), the same as autograd's (tested).
- **Bins**: ``m`` edges symmetric about 0.5 and dense near it (:func:`edges`): ``m // 2`` points spaced evenly
  on [1, sqrt(1000)], mapped through log base 1000 to [0, 0.5], mirrored to (0.5, 1], the last edge moved to
  1.01, and 1.2 appended: m - 1 intervals covering every state.
- **Per layer** M, O* and alpha (:data:`CIFAR10_SETTING`, the authors' CIFAR-10 values, from the deepest layer
  up) and the authors' grids (:data:`CIFAR10_GRID`) for the search on a validation split.
- **Coverage** is counted on 1,000 train images (100 per class for CIFAR-10, seeded); an image's score is the
  mean over layers of the layer's mean over neurons of ``min(count of its interval / O*, 1)``; the OOD score
  here is minus that.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .hooks import frozen_with_hooks
from .inputs import normalization_of, to_input

Setting = Tuple[int, int, float]          # (M, O*, alpha) of one layer

# The authors' CIFAR-10 ResNet-18 values, from the deepest layer (the pooled features) up.
CIFAR10_SETTING: Tuple[Setting, ...] = ((50, 50, 100.0), (500, 100, 1000.0), (50, 5, 0.001), (500, 100, 0.001))
CIFAR10_GRID: Tuple[Tuple[Setting, ...], ...] = (
    tuple((50, o, 100.0) for o in (10, 50)),
    tuple((m, 100, a) for m in (50, 500) for a in (1000.0, 5000.0)),
    tuple((50, o, 0.001) for o in (5, 10)),
    tuple((m, o, a) for o in (5, 10, 50, 100) for m in (50, 500) for a in (0.001, 0.005)))
FIT_IMAGES = 1000
POOLED = "pooled"


def default_stages(model) -> List[str]:
    """The modules whose outputs NAC-UE reads beside the pooled features: a ResNet's layer1, layer2 and layer3,
    the authors' ResNet-18 layers (on CIFAR inputs at 32x32, 16x16 and 8x8; the CIFAR ResNet-20/56 have the same
    three stages at the same resolutions, ResNet34 ResNet-18's four); a DenseNet's transitions ``transK`` (the
    outputs of its first blocks) and VGG's max-pooling layers but the last (the outputs of its first blocks)."""
    named = dict(model.named_modules())
    resnet = sorted((n for n in named if re.fullmatch(r"layer\d+", n)), key=lambda n: int(n[5:]))
    if len(resnet) >= 3:
        return resnet[:3]
    dense = sorted((n for n in named if re.fullmatch(r"trans\d+", n)), key=lambda n: int(n[5:]))
    if dense:
        return dense
    pools = [n for n, m in named.items() if isinstance(m, torch.nn.MaxPool2d)]
    if len(pools) >= 2:
        return pools[:-1]
    raise ValueError(f"no default NAC-UE stages for {model.arch}; name the modules with --nac-stages "
                     f"(e.g. 'block1,block2')")


def stage_products(model, images: np.ndarray, modules: Sequence[str], device: torch.device, batch_size: int = 128,
                   progress: Optional[str] = None) -> Dict[str, np.ndarray]:
    """``{module: (N, channels) float32}``: per image and channel, ``sum(o_c) * sum(g_c)`` over the spatial
    positions of the module's output o, g being the gradient of the summed cross-entropy against the uniform
    distribution. One forward and one backward pass per batch; the parameters are frozen for it."""
    model.eval()
    named = dict(model.named_modules())
    missing = [m for m in modules if m not in named]
    if missing:
        raise ValueError(f"--nac-stages: {model.arch} has no module {missing}; its top-level modules are "
                         f"{', '.join(n for n in named if n and '.' not in n)}")
    norm = normalization_of(model)
    captured: Dict[str, torch.Tensor] = {}
    hooks = [(named[m], lambda _mod, _inp, out, m=m: captured.__setitem__(m, out)) for m in modules]
    out: Dict[str, List[np.ndarray]] = {m: [] for m in modules}
    with frozen_with_hooks(model, hooks):
        for s in tqdm(range(0, len(images), batch_size), desc=progress or "nac stages", leave=False,
                      disable=progress is None):
            captured.clear()
            x = to_input(images[s:s + batch_size], device, normalization=norm).requires_grad_(True)
            with torch.enable_grad():
                logits = model(x)
                loss = -torch.log_softmax(logits, 1).mean(1).sum()
                grads = torch.autograd.grad(loss, [captured[m] for m in modules])
            for m, g in zip(modules, grads):
                o = captured[m].detach()
                out[m].append((_spatial_sum(o) * _spatial_sum(g)).float().cpu().numpy())
    return {m: np.concatenate(v) for m, v in out.items()}


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(2, 3)) if t.ndim == 4 else t.flatten(1)


def pooled_products(penultimate: np.ndarray, head) -> np.ndarray:
    """``o * g`` of the pooled features o, g = W^T (softmax(W o + b) - 1/C): the gradient of the cross-entropy
    against the uniform distribution (a 1x1 map: its sums are the values themselves)."""
    weight, bias = (np.asarray(a, dtype=np.float64) for a in head)
    o = np.asarray(penultimate, dtype=np.float64)
    p = torch.softmax(torch.from_numpy(o @ weight.T + bias), 1).numpy()
    return o * ((p - 1.0 / weight.shape[0]) @ weight)


def edges(m: int) -> np.ndarray:
    """The ``m`` interval edges on the states (see the module docstring)."""
    half = m // 2
    left = np.log(np.linspace(1.0, np.sqrt(1000.0), half)) / np.log(1000.0)
    out = np.concatenate([left[:-1], (1.0 - left)[::-1]])
    out[-1] += 1e-2
    return np.append(out, 1.2)


def _intervals(products: np.ndarray, m: int, alpha: float) -> np.ndarray:
    states = 1.0 / (1.0 + np.exp(-np.clip(alpha * np.asarray(products, dtype=np.float64), -500, 500)))
    e = edges(m)
    return np.clip(np.searchsorted(e, states, side="right") - 1, 0, len(e) - 2)


class LayerCoverage:
    """One layer's counts of train states per neuron and interval (``fit``) and its coverage of images."""

    def __init__(self, m: int, o_star: int, alpha: float):
        self.m, self.o_star, self.alpha = m, o_star, alpha

    def fit(self, products: np.ndarray) -> "LayerCoverage":
        idx = _intervals(products, self.m, self.alpha)
        n_int = len(edges(self.m)) - 1
        flat = (np.arange(idx.shape[1])[None, :] * n_int + idx).ravel()
        self.counts_ = np.bincount(flat, minlength=idx.shape[1] * n_int).reshape(idx.shape[1], n_int)
        return self

    def coverage(self, products: np.ndarray) -> np.ndarray:
        idx = _intervals(products, self.m, self.alpha)
        counts = self.counts_[np.arange(idx.shape[1]), idx]
        return np.minimum(counts / self.o_star, 1.0).mean(1)


def fit_rows(labels: np.ndarray, seed: int, size: int = FIT_IMAGES) -> np.ndarray:
    """The seeded train rows the coverage is counted on: ``size`` images, as many of each class."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(1, size // len(classes))
    rng = np.random.default_rng([seed, 3])
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())),
                                              replace=False) for c in classes]))


def nac_ue(train: Sequence[np.ndarray], sets: Dict[str, Sequence[np.ndarray]], settings: Sequence[Setting]
           ) -> Dict[str, np.ndarray]:
    """Minus the mean over layers of the coverage; ``train`` and each set's values are per layer, deepest first
    (the pooled features, then the stages from the last up), matched with ``settings`` in that order."""
    if len(settings) < len(train):
        raise ValueError(f"NAC-UE: {len(train)} layers but settings for {len(settings)}")
    total = {n: 0.0 for n in sets}
    for i, (t, (m, o_star, alpha)) in enumerate(zip(train, settings)):
        cov = LayerCoverage(m, o_star, alpha).fit(t)
        for n, values in sets.items():
            total[n] = total[n] + cov.coverage(values[i])
    return {n: -v / len(train) for n, v in total.items()}
