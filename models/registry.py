"""Model registry: scripts build models by name and never switch on it (cf. timm's ``create_model``)."""
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from .generic import TappedNetwork, build_network, is_generic
from .preprocess import PRESETS

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_RECIPES: Dict[str, Dict] = {}

# The original code's CIFAR training schedule for ResNet34; the default for models without their own.
_DEFAULT_RECIPE = dict(epochs=200, batch_size=128, lr=0.1, weight_decay=1e-4, milestones=[100, 150], gamma=0.1,
                       normalization="imagenet")


def register_model(fn: Optional[Callable[..., nn.Module]] = None, *, recipe: Optional[Dict] = None):
    """Decorator: register ``fn(num_classes=...)`` under its function name, with its training recipe.

    A recipe holds the default ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, a step schedule
    (``milestones`` and decay ``gamma``, or ``step_size`` and ``gamma``) and the input ``normalization``
    preset (``imagenet`` unless it says otherwise).
    """
    def wrap(f):
        _MODELS[f.__name__] = f
        _RECIPES[f.__name__] = {"normalization": "imagenet", **(recipe or _DEFAULT_RECIPE)}
        return f
    return wrap(fn) if fn is not None else wrap


def get_recipe(name: str) -> Dict:
    if is_generic(name):
        return {**_DEFAULT_RECIPE}
    if name not in _RECIPES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return dict(_RECIPES[name])


def list_models() -> List[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, taps: Optional[str] = None, head: Optional[str] = None,
                 pretrained: bool = False) -> nn.Module:
    """A registry model by name, or any network (``torchvision:NAME``, ``timm:NAME``, ``module.path:factory``)
    tapped at ``taps`` (see :mod:`models.generic`); ``taps``, ``head`` and ``pretrained`` apply to the latter."""
    if is_generic(name):
        model = TappedNetwork(build_network(name, num_classes, pretrained), taps or "blocks", head)
        model.arch, model.num_classes, model.normalization = name, num_classes, PRESETS["imagenet"]
        return model
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}, or torchvision:NAME, "
                         f"timm:NAME, module.path:factory")
    if taps is not None:
        raise ValueError(f"--taps applies to torchvision:, timm: and module:factory models; {name} has its own")
    model = _MODELS[name](num_classes=num_classes)
    model.arch = name
    model.num_classes = num_classes
    model.normalization = PRESETS[_RECIPES[name]["normalization"]]
    return model
