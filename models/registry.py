"""Model registry: scripts build models by name and never switch on it (cf. timm's ``create_model``)."""
from typing import Callable, Dict, List

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn(num_classes=...)`` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> List[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes)
    model.arch = name
    model.num_classes = num_classes
    return model
