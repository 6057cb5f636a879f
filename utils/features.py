"""Stage 2: per-layer features (the library behind ``save_inter_outputs.py``).

Every tap's output is pooled on the device by ``forward_intermediates`` and copied into arrays that
were preallocated on disk (``open_memmap``), so memory stays flat and nothing is stacked per batch.
"""
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from models import Normalization, load_model

from .odin import odin as odin_scores
from .data import NUM_CLASSES, normalization_of, to_input
from .generate import load_images
from .gram import POLES, GramBounds, gram_statistics, held_back
from .io import StagingDir, atomic_path, is_complete, read_json, sha256_file
from .paths import GRAM, GRAM_BOUNDS, LABELS, LOGITS, MANIFEST, ODIN, PENULTIMATE, Layout, layer_file

log = logging.getLogger(__name__)


def open_backbone(checkpoint, ind: str, arch: Optional[str] = None, device: torch.device = torch.device("cpu"),
                  normalization: Optional[Normalization] = None):
    """The checkpoint's model in eval mode on ``device``, and the checkpoint's sha256."""
    model = load_model(checkpoint, arch, NUM_CLASSES[ind], normalization)
    return model.to(device).eval(), sha256_file(checkpoint)


@torch.inference_mode()
def extract(model, images: np.ndarray, out: Path, device: torch.device, batch_size: int = 256,
            desc: str = "", progress: bool = True, statistic=None, on_batch=None) -> None:
    """Write ``layer_XXX.npy`` (one per tap), ``logits.npy`` and ``penultimate.npy`` for ``images``;
    ``on_batch(start, stop, intermediates)`` sees each batch's outputs (with ``statistic`` of every tap)."""
    n = len(images)
    norm = normalization_of(model)
    arrays = [np.lib.format.open_memmap(out / layer_file(i, "npy"), mode="w+", dtype=np.float32, shape=(n, w))
              for i, w in enumerate(model.tap_widths)]
    logits = penult = None
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        stop = min(start + batch_size, n)
        o = model.forward_intermediates(to_input(images[start:stop], device, normalization=norm), penultimate=True,
                                        statistic=statistic)
        if on_batch is not None:
            on_batch(start, stop, o)
        if logits is None:
            logits = np.lib.format.open_memmap(out / LOGITS, "w+", np.float32, (n, o.logits.shape[1]))
            penult = np.lib.format.open_memmap(out / PENULTIMATE, "w+", np.float32,
                                               (n, o.penultimate.shape[1]))
        for array, f in zip(arrays, o.features):
            array[start:stop] = f.float().cpu().numpy()
        logits[start:stop] = o.logits.float().cpu().numpy()
        penult[start:stop] = o.penultimate.float().cpu().numpy()
    for array in arrays + [logits, penult]:
        if array is not None:
            array.flush()
            if not np.isfinite(np.asarray(array)).all():
                raise ValueError(f"non-finite features in {out}: is the checkpoint broken?")


def save_features(model, ckpt_sha: str, layout: Layout, ind: str, tag: str, names: Sequence[str],
                  device: torch.device, batch_size: int = 256, force: bool = False, odin: bool = False,
                  gram: bool = False, seed: int = 0) -> Path:
    """Features of every set in ``names`` under the run directory; sets already complete are kept.

    ``odin`` also stores each image's ODIN score and ``gram`` its per-tap Gram deviations (both need the
    network itself, so they are computed here rather than from saved features; see utils/gram.py)."""
    run = layout.run(ind, model.arch, ckpt_sha, tag)
    save_head(model, run)
    for name in names:
        images, labels, image_manifest = load_images(layout, ind, tag, name)
        with_odin = odin and name != "train"     # ODIN scores only matter for the evaluated sets
        settings = {"checkpoint_sha256": ckpt_sha, "arch": model.arch, "images": image_manifest["settings"],
                    "taps": model.num_taps, "normalization": normalization_of(model).as_dict(), "odin": with_odin}
        if gram:
            settings.update(gram=True, gram_poles=len(POLES), gram_seed=seed)
        out = layout.features(run, name)
        if is_complete(out, settings) and not force:
            log.info(f"{name}: features already complete in {out}")
            continue
        with StagingDir(out, settings, {"count": len(images), "widths": model.tap_widths}) as tmp:
            if gram and name == "train":
                _extract_gram_bounds(model, images, labels, tmp, device, batch_size, seed)
            elif gram:
                _extract_gram_deviations(model, images, tmp, device, batch_size, layout.features(run, "train"))
            else:
                extract(model, images, tmp, device, batch_size, desc=name)
            np.save(tmp / LABELS, labels)
            if with_odin:
                np.save(tmp / ODIN, odin_scores(model, images, device, batch_size=batch_size,
                                                      progress=f"{name} ODIN"))
        log.info(f"{name}: {len(images)} images x {model.num_taps} layers -> {out}")
    return run


def _extract_gram_bounds(model, images, labels, out: Path, device, batch_size: int, seed: int) -> None:
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


def _extract_gram_deviations(model, images, out: Path, device, batch_size: int, train_dir: Path) -> None:
    if not (train_dir / GRAM_BOUNDS).exists():
        raise FileNotFoundError(f"Gram deviations need the train split's bounds ({train_dir / GRAM_BOUNDS}); "
                                f"save the train features with --gram first")
    bounds = GramBounds.load(train_dir / GRAM_BOUNDS)
    devs = np.lib.format.open_memmap(out / GRAM, "w+", np.float32, (len(images), model.num_taps))

    def deviate(start, stop, o):
        devs[start:stop] = bounds.deviations(o.statistics, o.logits.argmax(1).cpu().numpy())
    extract(model, images, out, device, batch_size, desc=f"{out.name} (+ Gram)", statistic=gram_statistics,
            on_batch=deviate)
    devs.flush()


def load_features(run: Path, name: str, expect_sha: Optional[str] = None) -> Dict[str, object]:
    """Memory-mapped features of one set: ``{'layers': [...], 'logits', 'penultimate', 'labels', 'manifest'}``
    and ``'odin'`` where it was computed."""
    d = Layout.features(run, name)
    manifest = read_json(d / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"no features for set {name!r} in {d}; run save_inter_outputs.py for it first")
    if expect_sha and manifest["settings"]["checkpoint_sha256"] != expect_sha:
        raise ValueError(f"features in {d} were made from another checkpoint "
                         f"({manifest['settings']['checkpoint_sha256'][:8]}, expected {expect_sha[:8]})")
    layers: List[np.ndarray] = [np.load(d / layer_file(i, "npy"), mmap_mode="r")
                                for i in range(manifest["settings"]["taps"])]
    out = {"layers": layers, "logits": np.load(d / LOGITS, mmap_mode="r"),
           "penultimate": np.load(d / PENULTIMATE, mmap_mode="r"), "labels": np.load(d / LABELS),
           "manifest": manifest}
    if (d / ODIN).exists():
        out["odin"] = np.load(d / ODIN)
    if (d / GRAM).exists():
        out["gram"] = np.load(d / GRAM)
    if (d / GRAM_BOUNDS).exists():
        out["gram_bounds"] = GramBounds.load(d / GRAM_BOUNDS)
    return out


def save_head(model, run: Path) -> None:
    """The classifier head's weight ``(C, D)`` and bias ``(C,)``, which the penultimate features feed
    (ReAct, ASH, DICE and ViM recompute logits from edited features)."""
    head = dict(model.named_modules())[model.head_name]
    with atomic_path(Layout.head(run)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, weight=head.weight.detach().cpu().numpy().astype(np.float64),
                     bias=head.bias.detach().cpu().numpy().astype(np.float64))


def load_head(run: Path):
    """``(weight, bias)`` saved by :func:`save_head`, or None for features saved before it existed."""
    path = Layout.head(run)
    if not path.exists():
        return None
    with np.load(path) as z:
        return z["weight"], z["bias"]
