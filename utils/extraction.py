"""The forward pass of stage 2: every tap pooled, the logits and the penultimate features of a set's images, written
into ``.npy`` files at their final shapes (and, fused into the same pass, NAC-UE's backward pass)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .inputs import normalization_of, to_input
from .nac import nac_values
from .paths import LOGITS, PENULTIMATE, layer_file

PRECISIONS = ("fp32", "bf16")

def inference_autocast(device: torch.device, precision: str = "fp32"):
    """A context factory for the forward pass: nothing for fp32, bfloat16 autocast for bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def output_widths(model) -> Dict[str, int]:
    """Widths of the logits and of the penultimate features (the head's output and input)."""
    head = dict(model.named_modules())[model.head_name]
    return {LOGITS: head.out_features, PENULTIMATE: head.in_features}


def preallocate(model, n: int, out: Path) -> None:
    """Create the ``.npy`` files :func:`extract` fills, at their final shapes."""
    shapes = {layer_file(i, "npy"): w for i, w in enumerate(model.tap_widths)} | output_widths(model)
    for name, width in shapes.items():
        np.lib.format.open_memmap(out / name, mode="w+", dtype=np.float32, shape=(n, width)).flush()


@torch.inference_mode()
def extract(model, images: np.ndarray, out: Path, device: torch.device, batch_size: int = 256,
            desc: str = "", progress: bool = True, statistic=None, on_batch=None, precision: str = "fp32",
            rank: int = 0, world: int = 1) -> None:
    """Write ``layer_XXX.npy`` (one per tap), ``logits.npy`` and ``penultimate.npy`` for ``images``;
    ``on_batch(start, stop, intermediates)`` sees each batch's outputs (with ``statistic`` of every tap).

    ``precision="bf16"`` runs the forward pass under bfloat16 autocast (pooling and the saved arrays stay
    float32); see :data:`PRECISIONS`. With ``world`` > 1 the files must exist (:func:`preallocate`) and
    this process fills batches ``rank, rank + world, ...``: the same batches a single process makes.
    """
    n = len(images)
    norm = normalization_of(model)
    autocast = inference_autocast(device, precision)
    arrays = _open_arrays(model, n, out, create=world == 1)
    starts = range(rank * batch_size, n, world * batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress):
        stop = min(start + batch_size, n)
        with autocast():
            o = model.forward_intermediates(to_input(images[start:stop], device, normalization=norm),
                                            penultimate=True, statistic=statistic)
        if on_batch is not None:
            on_batch(start, stop, o)
        _write(arrays, start, stop, o)
    _close(arrays, out, starts, batch_size)


def extract_with_nac(model, images: np.ndarray, out: Path, device: torch.device, batch_size: int = 256,
                     desc: Optional[str] = None, taps: Optional[Sequence[int]] = None) -> np.ndarray:
    """:func:`extract`'s files for ``images`` and NAC-UE's values (:func:`utils.nac.nac_values`, returned)
    from one forward pass per batch: NAC's forward computes every tap anyway, so the features come with it
    rather than from a second pass (1.3-1.9x faster than two passes: docs/benchmarks.md). ``desc``: the
    progress bar's label (none without it)."""
    arrays = _open_arrays(model, len(images), out)
    values = nac_values(model, images, device, batch_size, progress=desc, taps=taps,
                        on_batch=lambda start, stop, o: _write(arrays, start, stop, o))
    _close(arrays, out, range(0, len(images), batch_size), batch_size)
    return values


def _open_arrays(model, n: int, out: Path, create: bool = True) -> List[np.ndarray]:
    if create:
        preallocate(model, n, out)
    names = [layer_file(i, "npy") for i in range(model.num_taps)] + [LOGITS, PENULTIMATE]
    return [np.load(out / name, mmap_mode="r+") for name in names]


def _write(arrays: List[np.ndarray], start: int, stop: int, o) -> None:
    for array, f in zip(arrays, o.features + [o.logits, o.penultimate]):
        array[start:stop] = f.detach().float().cpu().numpy()


def _close(arrays: List[np.ndarray], out: Path, starts: Sequence[int], batch_size: int) -> None:
    for array in arrays:
        array.flush()
        if not all(np.isfinite(array[s:s + batch_size]).all() for s in starts):
            raise ValueError(f"non-finite features in {out}: is the checkpoint broken?")
