"""The network's input: uint8 images to a normalised float tensor, with the normalisation a model expects."""
from typing import Optional

import numpy as np

from models import PRESETS, Normalization


def normalization_of(model) -> Normalization:
    """The input normalisation a model (or its DistributedDataParallel / compiled wrapper) expects."""
    inner = getattr(model, "module", getattr(model, "_orig_mod", model))
    return getattr(inner, "normalization", PRESETS["imagenet"])


def to_input(images, device=None, dtype=None, normalization: Optional[Normalization] = None):
    """uint8 ``(N, H, W, 3)`` images (array or tensor) to a normalised float ``(N, 3, H, W)`` tensor.

    ``normalization`` is the model's (:func:`normalization_of`); ImageNet's mean and std when not given,
    as the original code and the shared VGG16 / ResNets use. The conversion runs on ``device``, so only
    uint8 bytes cross to it.
    """
    import torch
    norm = normalization or PRESETS["imagenet"]
    if isinstance(images, torch.Tensor):
        x = images.to(device, non_blocking=True)
    else:
        x = torch.as_tensor(np.array(images, copy=True)).to(device, non_blocking=True)  # mmap arrays are read-only
    x = x.permute(0, 3, 1, 2).to(dtype or torch.float32).div_(255)
    mean = torch.tensor(norm.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
