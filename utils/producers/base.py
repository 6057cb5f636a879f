"""What a stage-2 producer is: one kind of stored input beside the tap features, with its flag, the manifest
settings it adds, the files it writes into a set's directory, how it computes them and how they load."""
import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch


@dataclass
class Context:
    """What a producer's pass is handed for one set."""
    model: Any
    device: torch.device
    batch_size: int
    seed: int
    name: str                                         # the set
    train_dir: Path                                   # the train split's features (Gram's bounds live there)
    options: Dict[str, Any] = field(default_factory=dict)   # this producer's options (``Producer.options``)


class Producer:
    """One kind of stored input. Subclasses set ``name`` (its flag ``--name`` and the need methods declare) and
    ``help``, and implement :meth:`compute` and :meth:`load`; the others have defaults."""
    name = ""
    help = ""
    fuses = False          # compute() can write the tap features in its own forward pass (then no plain pass runs)
    settings_when_off: Dict[str, Any] = {}   # manifest entries of a set it does not apply to (kept as they were)

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(f"--{self.name.replace('_', '-')}", action="store_true", help=self.help)

    def options(self, args) -> Dict[str, Any]:
        """``None`` when the flags leave this producer off, else its options."""
        return {} if getattr(args, self.name, False) else None

    def applies(self, set_name: str) -> bool:
        return True

    def settings(self, model, options: Dict[str, Any], seed: int) -> Dict[str, Any]:
        """The manifest entries of a set it applies to (what its files depend on)."""
        return {self.name: True}

    def compute(self, ctx: Context, images: np.ndarray, labels: np.ndarray, out: Path, fused: bool) -> None:
        """Write its files for ``images`` into ``out``; with ``fused``, also the tap features (``extract``'s)."""
        raise NotImplementedError

    def load(self, d: Path, manifest: Dict, out: Dict[str, Any], rebuild: str) -> None:
        """Add what it stored in the set directory ``d`` to the loaded features ``out`` (nothing if absent)."""
        raise NotImplementedError

    def available(self, train: Dict, sets: Dict[str, Dict]) -> bool:
        """Whether the loaded features carry its values for every set a method would score."""
        return bool(sets) and all(self.name in f for f in sets.values())


_PRODUCERS: Dict[str, Producer] = {}


def register_producer(cls):
    """Class decorator: register a :class:`Producer` (the order of registration is the order of the passes)."""
    producer = cls()
    if not producer.name or producer.name in _PRODUCERS:
        raise ValueError(f"a producer needs a name not yet registered, got {producer.name!r}")
    _PRODUCERS[producer.name] = producer
    return cls


def list_producers() -> List[str]:
    return list(_PRODUCERS)


def get_producer(name: str) -> Producer:
    if name not in _PRODUCERS:
        raise ValueError(f"unknown producer {name!r}; choose from {', '.join(_PRODUCERS)}")
    return _PRODUCERS[name]
