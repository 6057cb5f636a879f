"""Stage 2's producers: each kind of stored input beside the tap features (the taps, logits and penultimate
features every run stores, utils/extraction.py) is one registered :class:`Producer`: ``odin``, ``gram`` and
``nac``. A producer declares its flag, the manifest settings it adds, the files it writes into a set's directory,
how it computes them (in the set's one forward pass where it ``fuses``) and how they load; a scoring method names
the producers it needs. Adding one is one module here with a class decorated by :func:`register_producer`, imported
below, and its test (docs/methods.md)."""
from . import gram, nac, odin  # noqa: F401  (importing a producer's module registers it; gram's pass before nac's)
from .base import Context, Producer, get_producer, list_producers, register_producer

__all__ = ["Context", "Producer", "get_producer", "list_producers", "register_producer"]
