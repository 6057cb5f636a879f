"""Backbones with per-layer feature taps.

>>> from models import create_model
>>> model = create_model("vgg16", num_classes=10)
>>> out = model.forward_intermediates(images)   # out.logits, out.features (13 tensors of (N, C))
"""
from . import densenet, resnet, vgg  # noqa: F401  (registers the models)
from .checkpoint import Checkpoint, load_model, read_checkpoint
from .preprocess import PRESETS, Normalization, parse_normalization
from .registry import create_model, get_recipe, list_models, register_model
from .taps import Intermediates, TappedModel

__all__ = ["create_model", "get_recipe", "list_models", "register_model", "load_model", "read_checkpoint", "Checkpoint",
           "Intermediates", "TappedModel", "Normalization", "PRESETS", "parse_normalization"]
