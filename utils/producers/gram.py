"""Gram-matrix deviations (Sastry and Oore, ICML 2020; utils/gram.py): the train split's pass also fits the bounds
(from all but a seeded 10%, whose deviations calibrate them), every other set's pass stores its per-tap deviations.
They need the full feature maps, so they come from the set's one forward pass (``fuses``)."""
import shutil
from pathlib import Path

import numpy as np
import torch

from ..extraction import extract
from ..gram import POLES, GramBounds, gram_statistics, held_back
from ..io import load_array
from ..paths import GRAM, GRAM_BOUNDS
from .base import Producer, register_producer


@register_producer
class GramProducer(Producer):
    name = "gram"
    help = ("also store the Gram-matrix deviations of every tap (Sastry and Oore 2020; about 2x the forward cost, the "
            "train split needs a second pass over 10%% of it)")
    fuses = True

    def settings(self, model, options, seed):
        return {"gram": True, "gram_poles": len(POLES), "gram_seed": seed}

    def compute(self, ctx, images, labels, out, fused):
        if not fused:
            raise ValueError("Gram deviations come from the set's own forward pass")
        if ctx.name == "train":
            _bounds(ctx.model, images, labels, out, ctx.device, ctx.batch_size, ctx.seed)
        else:
            _deviations(ctx.model, images, out, ctx.device, ctx.batch_size, ctx.train_dir, ctx.name)

    def load(self, d, manifest, out, rebuild):
        if (d / GRAM).exists():
            out["gram"] = load_array(d / GRAM, rebuild)
        if (d / GRAM_BOUNDS).exists():
            out["gram_bounds"] = GramBounds.load(d / GRAM_BOUNDS)

    def available(self, train, sets):
        return super().available(train, sets) and "gram_bounds" in train


def _bounds(model, images, labels, out: Path, device, batch_size: int, seed: int) -> None:
    """The train pass: features, and Gram bounds from all but a seeded 10%; then the expected deviation
    per tap over that 10%, in a second pass over them."""
    held = held_back(len(images), seed)
    fit = np.ones(len(images), bool)
    fit[held] = False
    bounds = GramBounds.empty(int(labels.max()) + 1, model.tap_widths)

    def update(start, stop, o):
        keep = fit[start:stop]
        if keep.any():
            bounds.update([g[torch.from_numpy(keep)] for g in o.statistics], labels[start:stop][keep])
    extract(model, images, out, device, batch_size, desc="train (+ Gram bounds)", statistic=gram_statistics,
            on_batch=update)
    bounds.check()
    devs = np.zeros((len(held), model.num_taps))

    def deviate(start, stop, o):
        devs[start:stop] = bounds.deviations(o.statistics, o.logits.argmax(1).cpu().numpy())
    (out / "held").mkdir()
    extract(model, images[held], out / "held", device, batch_size, desc="Gram held-back", statistic=gram_statistics,
            on_batch=deviate)
    shutil.rmtree(out / "held")
    bounds.expected, bounds.held = devs.mean(0), held
    bounds.save(out / GRAM_BOUNDS)


def _deviations(model, images, out: Path, device, batch_size: int, train_dir: Path, name: str) -> None:
    if not (train_dir / GRAM_BOUNDS).exists():
        raise FileNotFoundError(f"Gram deviations need the train split's bounds ({train_dir / GRAM_BOUNDS}); "
                                f"save the train features with --gram first")
    bounds = GramBounds.load(train_dir / GRAM_BOUNDS)
    devs = np.lib.format.open_memmap(out / GRAM, "w+", np.float32, (len(images), model.num_taps))

    def deviate(start, stop, o):
        devs[start:stop] = bounds.deviations(o.statistics, o.logits.argmax(1).cpu().numpy())
    extract(model, images, out, device, batch_size, desc=f"{name} (+ Gram)", statistic=gram_statistics,
            on_batch=deviate)
    devs.flush()
