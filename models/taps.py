"""One feature mechanism for every backbone: forward hooks on a declared list of tap modules.

A model subclasses :class:`TappedModel` and names, in network order, the modules whose outputs are
LA-OOD's layers (``tap_names``) and its classification head (``head_name``). Each tap's output is
averaged over its spatial dimensions on the device, so only an ``(N, C)`` matrix per layer ever leaves
the forward pass. The same call works under ``torch.no_grad`` and with gradients (co-training).
"""
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn


class Intermediates(NamedTuple):
    logits: torch.Tensor
    features: List[torch.Tensor]          # one (N, width) tensor per tap, in network order
    penultimate: Optional[torch.Tensor]   # the input of the head, (N, D), if asked for
    statistics: Optional[List[torch.Tensor]] = None   # statistic(tap output) per tap, if one was given


def _pool(out: torch.Tensor) -> torch.Tensor:
    out = out.float()   # a no-op in float32; under bfloat16 autocast the mean is taken in float32
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
        """Channels (or units) of every tap: the width of its pooled feature vector. Read off convolutions
        and linear layers; measured with one forward pass of ``input_size`` where a tap is anything else."""
        modules = self.tap_modules
        if all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in modules):
            return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in modules]
        if "_probed_widths" not in self.__dict__:
            was_training = self.training
            try:
                with torch.no_grad():
                    x = torch.zeros(1, *getattr(self, "input_size", (3, 32, 32)), device=next(self.parameters()).device)
                    self.__dict__["_probed_widths"] = [f.shape[1] for f in self.eval().forward_intermediates(x).features]
            finally:
                self.train(was_training)
        return list(self.__dict__["_probed_widths"])

    @torch.no_grad()
    def tap_macs(self, input_size=None) -> Tuple[List[int], int]:
        """Multiply-accumulates of one image up to and including each tap, and of the whole network.

        Counts every convolution and linear layer in execution order (the rest is negligible), so
        ``cumulative[i] / total`` is the share of the network an early exit at tap ``i`` spends.
        """
        executed: List[Tuple[nn.Module, int]] = []

        def hook(module, inputs, out):
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = out[0].numel() * module.in_channels // module.groups * kh * kw
            else:
                macs = module.in_features * module.out_features
            executed.append((module, macs))

        handles = [m.register_forward_hook(hook) for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        # A tap that is neither (a block, an activation) is placed by when its output appears.
        handles += [m.register_forward_hook(lambda m, i, o: executed.append((m, 0))) for m in self.tap_modules
                    if not isinstance(m, (nn.Conv2d, nn.Linear))]
        was_training = self.training
        try:
            size = input_size or (1, *getattr(self, "input_size", (3, 32, 32)))
            self.eval()(torch.zeros(size, device=next(self.parameters()).device))
        finally:
            self.train(was_training)
            for h in handles:
                h.remove()
        running, position = 0, {}
        for module, macs in executed:
            running += macs
            position[id(module)] = running
        return [position[id(m)] for m in self.tap_modules], running

    def forward_intermediates(self, x: torch.Tensor, layers: Optional[List[int]] = None, penultimate: bool = False,
                              statistic: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Intermediates:
        """Logits and the spatially averaged output of every tap (or only of ``layers``); with ``statistic``,
        also ``statistic(output)`` of every tap's full output (e.g. Gram-matrix statistics), in the same pass."""
        wanted = range(self.num_taps) if layers is None else layers
        modules = self.tap_modules
        pooled, stats = {}, {}
        handles = []

        def make_hook(i):
            def hook(_module, _inputs, out):
                pooled[i] = _pool(out)
                if statistic is not None:
                    stats[i] = statistic(out)
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
        return Intermediates(logits, [pooled[i] for i in wanted], head_input[0] if penultimate else None,
                             [stats[i] for i in wanted] if statistic is not None else None)
