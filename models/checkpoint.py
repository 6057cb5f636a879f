"""Checkpoints that carry what is needed to rebuild and feed their model (``arch``, ``num_classes``,
``normalization``, ``state_dict``); they are written by ``utils.io.save_checkpoint``.

Also reads the original LA-OOD code's plain ``state_dict`` files and ``{'state_dict': ...}`` files saved
from ``DataParallel`` (keys prefixed ``module.``), given the architecture name.
"""
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from .preprocess import Normalization
from .generic import is_generic
from .registry import create_model, list_models


class Checkpoint(NamedTuple):
    arch: Optional[str]                     # None for a plain state dict
    num_classes: Optional[int]
    state_dict: dict
    normalization: Optional[Normalization]  # None where the file does not say
    taps: Optional[str] = None              # torchvision:/timm:/module: models: the tap patterns it was trained with
    head: Optional[str] = None              # ... and its classifier module


def _head_classes(state_dict: dict) -> Optional[int]:
    """Class count read off the last 2-D weight (the classifier head) of a state dict."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and getattr(v, "dim", lambda: 0)() == 2]
    return int(weights[-1].shape[0]) if weights else None


def read_checkpoint(path) -> Checkpoint:
    """What a checkpoint file says of its model, with any ``module.`` prefix stripped from the keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with train_backbone_model.py "
                                f"or pass the path of an existing file with --checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file, or one holding arbitrary objects
        # torch's own message suggests weights_only=False, which would run code from the file: not passed on.
        raise ValueError(f"checkpoint {path} could not be read safely ({type(e).__name__}): it is damaged, not a "
                         f"PyTorch file, or holds objects other than tensors and plain values, which are never "
                         f"unpickled here. Re-save the weights from code you trust with "
                         f"torch.save(model.state_dict(), path)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    arch, num_classes = obj.get("arch"), obj.get("num_classes")
    norm = Normalization.from_dict(obj["normalization"]) if isinstance(obj.get("normalization"), dict) else None
    if isinstance(obj.get("state_dict"), dict):
        state_dict = obj["state_dict"]
    else:
        state_dict = obj
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if num_classes is None:
        num_classes = _head_classes(state_dict)
    return Checkpoint(arch, num_classes, state_dict, norm, obj.get("taps"), obj.get("head"))


def load_model(path, arch: Optional[str] = None, num_classes: Optional[int] = None,
               normalization: Optional[Normalization] = None, taps: Optional[str] = None,
               head: Optional[str] = None) -> nn.Module:
    """Rebuild a model from a checkpoint and load its weights with ``strict=True``, in float32.

    ``arch`` is needed only for plain state dicts; when a checkpoint names its architecture, a
    different ``arch`` is an error rather than a silent switch. The model's ``normalization`` is the
    checkpoint's, else ``normalization``, else the recipe's default; a ``normalization`` that contradicts
    the one the checkpoint records is an error.
    """
    saved_arch, saved_classes, state_dict, saved_norm, saved_taps, saved_head = read_checkpoint(path)
    taps, head = taps or saved_taps, head or saved_head
    if saved_arch and arch and saved_arch != arch:
        raise ValueError(f"checkpoint {path} holds a {saved_arch}, but --model {arch} was asked for")
    arch = saved_arch or arch
    if arch is None:
        raise ValueError(f"checkpoint {path} does not name its architecture (a plain state dict); "
                         f"pass --model (one of {', '.join(list_models())})")
    if num_classes is not None and saved_classes is not None and num_classes != saved_classes:
        raise ValueError(f"checkpoint {path} has {saved_classes} classes, but {num_classes} were expected "
                         f"(is it trained on another in-distribution set?)")
    if saved_norm is not None and normalization is not None and not saved_norm.same_as(normalization):
        raise ValueError(f"checkpoint {path} records its input normalisation ({saved_norm.name}: mean "
                         f"{saved_norm.mean}, std {saved_norm.std}); --normalization {normalization.name} "
                         f"contradicts it. Leave the flag out for this file")
    model = create_model(arch, saved_classes or num_classes or 10, taps=taps, head=head)
    if is_generic(arch) and not all(k.startswith("net.") for k in state_dict):   # the network's own keys
        state_dict = {f"net.{k}": v for k, v in state_dict.items()}
    model.normalization = saved_norm or normalization or model.normalization
    own = model.state_dict()
    # Files saved before PyTorch 0.4.1 (e.g. the akamaster ResNets) lack BatchNorm's step counter,
    # which only matters for momentum=None; PyTorch itself fills it in for such files.
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state_dict:
            state_dict[k] = torch.zeros_like(own[k])
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or mismatched:
        detail = "; ".join(f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("shape mismatch", mismatched)) if keys)
        raise ValueError(f"checkpoint {path} does not fit model {arch} ({model.num_classes} classes): {detail}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                          strict=True)
    return model.eval()
