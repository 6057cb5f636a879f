"""The frame of a gradient pass over a frozen network: forward hooks on some modules and the parameters out of
autograd for the pass, both undone afterwards, also when the pass fails (NAC-UE's two definitions use it)."""
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Tuple

import torch


@contextmanager
def frozen_with_hooks(model: torch.nn.Module, hooks: Sequence[Tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Within the block: each ``(module, hook)`` of ``hooks`` registered as a forward hook, and every parameter of
    ``model`` that required grad frozen (gradients then flow to the activations only, and nothing is accumulated
    in ``.grad``). On exit the hooks are removed and exactly those parameters require grad again."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
