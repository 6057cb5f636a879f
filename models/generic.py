"""Any ``nn.Module`` as a backbone: built by torchvision, timm or a user's factory, tapped by module name.

    --model torchvision:resnet18             torchvision.models.get_model("resnet18", num_classes=K)
    --model timm:resnet18                    timm.create_model("resnet18", num_classes=K)   (if timm is installed)
    --model my_package.nets:build            my_package.nets.build(num_classes=K)
    --taps 'layer*.*.conv2,fc'               modules whose names match these patterns (fnmatch), in network order
    --taps convs | blocks                    presets: every convolution; every block of a Sequential

The network is wrapped in :class:`TappedNetwork`, a :class:`~models.taps.TappedModel` like the registry's
models: the same hooks, pooled on the device, the same features and stages.
"""
import fnmatch
import hashlib
import importlib
import re
from typing import List, Optional, Sequence

import torch.nn as nn

from .taps import TappedModel

PRESETS = ("convs", "blocks")


def is_generic(arch: Optional[str]) -> bool:
    """True for a ``library:name`` or ``module:factory`` model name (registry names have no colon)."""
    return bool(arch) and ":" in arch


def build_network(spec: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The network named by ``spec`` (``torchvision:NAME``, ``timm:NAME`` or ``module.path:factory``)."""
    source, _, name = spec.partition(":")
    if not source or not name:
        raise ValueError(f"--model {spec!r}: expected torchvision:NAME, timm:NAME or module.path:factory")
    if source == "torchvision":
        import torchvision
        try:
            return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None,
                                                **({} if pretrained else {"num_classes": num_classes}))
        except ValueError as e:
            raise ValueError(f"--model {spec}: {e}") from e
    if source == "timm":
        try:
            import timm
        except ImportError as e:
            raise ValueError(f"--model {spec} needs timm: pip install timm") from e
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    try:
        module = importlib.import_module(source)
    except ImportError as e:
        raise ValueError(f"--model {spec}: cannot import {source} ({e}); is it on PYTHONPATH?") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--model {spec}: {source} has no callable {name}")
    try:
        return factory(num_classes=num_classes)
    except TypeError:
        return factory()


def select_taps(net: nn.Module, taps: str) -> List[str]:
    """Names of ``net``'s modules chosen by ``taps`` (comma-separated fnmatch patterns, or a preset), in the
    order the modules were registered (network order for every common architecture)."""
    named = [(n, m) for n, m in net.named_modules() if n]
    if taps == "convs":
        names = [n for n, m in named if isinstance(m, nn.Conv2d)]
    elif taps == "blocks":
        parents = {n for n, m in named if isinstance(m, (nn.Sequential, nn.ModuleList))}
        names = [n for n, m in named if n.rpartition(".")[0] in parents and any(True for _ in m.children())]
    else:
        patterns = [p.strip() for p in taps.split(",") if p.strip()]
        names = [n for n, _ in named if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in named)]
        if unmatched:
            raise ValueError(f"--taps {', '.join(unmatched)} matched no module; module names look like "
                             f"{', '.join(n for n, _ in named[:8])} ...")
    if not names:
        raise ValueError(f"--taps {taps!r} chose no module of {type(net).__name__}")
    return names


class TappedNetwork(TappedModel):
    """A network tapped at ``taps`` (see :func:`select_taps`), its head the last ``nn.Linear`` unless named."""

    def __init__(self, net: nn.Module, taps: str = "blocks", head: Optional[str] = None,
                 input_size: Sequence[int] = (3, 32, 32)):
        super().__init__()
        self.net = net
        self.taps = taps
        self.tap_names = [f"net.{n}" for n in select_taps(net, taps)]
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        if head is None and not linears:
            raise ValueError(f"{type(net).__name__} has no nn.Linear head; name its classifier with --head")
        self.head_name = f"net.{head or linears[-1]}"
        self.input_size = tuple(input_size)

    def forward(self, x):
        return self.net(x)


def safe_name(arch: str) -> str:
    """``arch`` with every character a path should not hold replaced: ``torchvision:resnet18`` -> ``torchvision-resnet18``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", arch)


def run_name(arch: str, taps: Optional[str]) -> str:
    """A directory-safe name for a model and its taps: ``resnet56`` for registry models,
    ``torchvision-resnet18-t1a2b3c`` (the taps' hash) for the others."""
    if not is_generic(arch):
        return arch
    digest = hashlib.sha1((taps or "blocks").encode()).hexdigest()[:6]
    return f"{safe_name(arch)}-t{digest}"
