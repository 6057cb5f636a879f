"""One feature mechanism for every backbone: forward hooks on a declared list of tap modules.

A model subclasses :class:`TappedModel` and names, in network order, the modules whose outputs are
LA-OOD's layers (``tap_names``) and its classification head (``head_name``). Each tap's output is
averaged over its spatial dimensions on the device, so only an ``(N, C)`` matrix per layer ever leaves
the forward pass. The same call works under ``torch.no_grad`` and with gradients (co-training).
"""
from typing import List, NamedTuple, Optional

import torch
import torch.nn as nn


class Intermediates(NamedTuple):
    logits: torch.Tensor
    features: List[torch.Tensor]          # one (N, width) tensor per tap, in network order
    penultimate: Optional[torch.Tensor]   # the input of the head, (N, D), if asked for


def _pool(out: torch.Tensor) -> torch.Tensor:
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out


class TappedModel(nn.Module):
    tap_names: List[str]   # filled by each model's constructor
    head_name: str

    @property
    def tap_modules(self) -> List[nn.Module]:
        modules = dict(self.named_modules())
        return [modules[name] for name in self.tap_names]

    @property
    def num_taps(self) -> int:
        return len(self.tap_names)

    @property
    def tap_widths(self) -> List[int]:
        """Channels (or units) of every tap: the width of its pooled feature vector."""
        return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in self.tap_modules]

    def forward_intermediates(self, x: torch.Tensor, layers: Optional[List[int]] = None,
                              penultimate: bool = False) -> Intermediates:
        """Logits and the spatially averaged output of every tap (or only of ``layers``)."""
        wanted = range(self.num_taps) if layers is None else layers
        modules = self.tap_modules
        pooled = {}
        handles = []

        def make_hook(i):
            def hook(_module, _inputs, out):
                pooled[i] = _pool(out)
            return hook

        for i in wanted:
            handles.append(modules[i].register_forward_hook(make_hook(i)))
        head_input = []
        if penultimate:
            head = dict(self.named_modules())[self.head_name]
            handles.append(head.register_forward_pre_hook(lambda _m, inputs: head_input.append(inputs[0])))
        try:
            logits = self(x)
        finally:
            for h in handles:
                h.remove()
        return Intermediates(logits, [pooled[i] for i in wanted], head_input[0] if penultimate else None)
