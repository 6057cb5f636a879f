"""Stage 2: per-layer features (the library behind ``save_inter_outputs.py``).

Every tap's output is pooled on the device by ``forward_intermediates`` and copied into arrays that
were preallocated on disk (``open_memmap``), so memory stays flat and nothing is stacked per batch.
"""
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from models import Normalization, load_model
from models.generic import is_generic, run_name

from .nac import nac_values, select_taps
from .nac_authors import default_stages, fit_rows, stage_products
from .odin import odin as odin_scores
from .inputs import normalization_of, to_input
from .sets import NUM_CLASSES
from .generate import load_images
from .gram import POLES, GramBounds, gram_statistics, held_back
from .io import StagingDir, atomic_path, is_complete, load_array, read_json, sha256_file
from .paths import GRAM, GRAM_BOUNDS, LABELS, LOGITS, MANIFEST, NAC, ODIN, PENULTIMATE, Layout, layer_file

log = logging.getLogger(__name__)


PRECISIONS = ("fp32", "bf16")
NAC_VERSION = 1   # what nac.npy holds (utils/nac.py); a change means the sets are recomputed


def inference_autocast(device: torch.device, precision: str = "fp32"):
    """A context factory for the forward pass: nothing for fp32, bfloat16 autocast for bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def open_backbone(checkpoint, ind, arch: Optional[str] = None, device: torch.device = torch.device("cpu"),
                  normalization: Optional[Normalization] = None, taps: Optional[str] = None,
                  head: Optional[str] = None):
    """The checkpoint's model in eval mode on ``device``, and the checkpoint's sha256. ``ind``: the
    in-distribution set's name (cifar10, cifar100) or its class count. ``taps`` and ``head`` choose the tapped
    modules of torchvision:, timm: and module:factory models (see models/generic.py)."""
    model = load_model(checkpoint, arch, ind if isinstance(ind, int) else NUM_CLASSES[ind], normalization, taps, head)
    return model.to(device).eval(), sha256_file(checkpoint)


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


def save_features(model, ckpt_sha: str, layout: Layout, ind: str, tag: str, names: Sequence[str],
                  device: torch.device, batch_size: int = 256, force: bool = False, odin: bool = False,
                  gram: bool = False, seed: int = 0, precision: str = "fp32", nac: bool = False,
                  nac_taps: Optional[str] = None) -> Path:
    """Features of every set in ``names`` under the run directory; sets already complete are kept.

    ``odin`` also stores each image's ODIN score and ``gram`` its per-tap Gram deviations (both need the
    network itself, so they are computed here rather than from saved features; see utils/gram.py); ``nac``
    stores NAC-UE's gradient quantities of every tap, for every set (utils/nac.py), or of the taps that
    ``nac_taps`` names (:func:`utils.nac.select_taps`; giving it implies ``nac``).
    ``precision`` other than fp32 gets its own run directory (see :meth:`Layout.run`)."""
    nac = nac or nac_taps is not None
    nac_chosen = select_taps(nac_taps, model.tap_names) if nac else None
    if (odin or gram or nac) and precision != "fp32":
        raise ValueError("--odin, --gram and --nac run in float32 only; leave out --precision or those flags")
    rank, world = process_group()
    if world > 1 and (odin or gram or nac):
        raise ValueError("--odin, --gram and --nac run in one process; start save_inter_outputs.py without torchrun")
    run = layout.run(ind, run_name(model.arch, getattr(model, "taps", None)), ckpt_sha, tag, precision)
    if rank == 0:
        save_head(model, run)
    for name in names:
        images, labels, image_manifest = load_images(layout, ind, tag, name)
        with_odin = odin and name != "train"     # ODIN scores only matter for the evaluated sets
        settings = {"checkpoint_sha256": ckpt_sha, "arch": model.arch, "images": image_manifest["settings"],
                    "taps": model.num_taps, "normalization": normalization_of(model).as_dict(), "odin": with_odin}
        if is_generic(model.arch):   # which modules were tapped; the registry's models name theirs
            settings.update(tap_spec=model.taps, tap_names=model.tap_names, head=model.head_name)
        if precision != "fp32":   # absent: float32, as every run before the option existed
            settings["precision"] = precision
        if gram:
            settings.update(gram=True, gram_poles=len(POLES), gram_seed=seed)
        if nac:
            settings.update(nac=True, nac_version=NAC_VERSION)
            if len(nac_chosen) < model.num_taps:   # absent: every tap, as every run before the option existed
                settings["nac_taps"] = nac_chosen
        out = layout.features(run, name)
        if is_complete(out, settings) and not force:
            log.info(f"{name}: features already complete in {out}")
            continue
        if world > 1:
            _extract_across_ranks(model, images, labels, out, settings, device, batch_size, name, precision)
            continue
        with StagingDir(out, settings, {"count": len(images), "widths": model.tap_widths,
                                          "input_size": int(images.shape[1])}) as tmp:
            if gram and name == "train":
                _extract_gram_bounds(model, images, labels, tmp, device, batch_size, seed)
            elif gram:
                _extract_gram_deviations(model, images, tmp, device, batch_size, layout.features(run, "train"), name)
            elif nac:   # the features from NAC's own forward pass
                np.save(tmp / NAC, extract_with_nac(model, images, tmp, device, batch_size,
                                                    desc=f"{name} (features + NAC)", taps=nac_chosen))
            else:
                extract(model, images, tmp, device, batch_size, desc=name, precision=precision)
            np.save(tmp / LABELS, labels)
            if with_odin:
                np.save(tmp / ODIN, odin_scores(model, images, device, batch_size=batch_size,
                                                      progress=f"{name} ODIN"))
            if nac and gram:
                np.save(tmp / NAC, nac_values(model, images, device, batch_size, progress=f"{name} NAC",
                                              taps=nac_chosen))
        log.info(f"{name}: {len(images)} images x {model.num_taps} layers -> {out}")
    return run


def process_group():
    """``(rank, world size)`` of the torch.distributed group this process belongs to (``torchrun``), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _extract_across_ranks(model, images, labels, out: Path, settings: Dict, device, batch_size: int, name: str,
                          precision: str) -> None:
    """One set split across the ranks of a process group: rank 0 stages the directory and preallocates the
    files, every rank fills its own batches, and rank 0 writes the manifest and moves the directory into
    place once all have finished. A rank that dies leaves only the staging directory, which nothing reads
    (and a later run deletes)."""
    dist = torch.distributed
    rank, world = process_group()
    info = {"count": len(images), "widths": model.tap_widths, "processes": world, "input_size": int(images.shape[1])}
    # Only rank 0 owns the staging directory; it leaves the ``with`` by moving it into place, or, on any
    # rank's failure, by deleting it. The others share its path.
    with (StagingDir(out, settings, info) if rank == 0 else contextlib.nullcontext()) as staged:
        box = [str(staged) if rank == 0 else None]
        if rank == 0:
            preallocate(model, len(images), staged)
        dist.broadcast_object_list(box, src=0)
        failed = torch.ones(1)
        try:
            extract(model, images, Path(box[0]), device, batch_size, desc=f"{name} (rank {rank}/{world})",
                    precision=precision, rank=rank, world=world, progress=rank == 0)
            failed.zero_()
        finally:
            dist.all_reduce(failed)   # also the barrier: every rank has written its rows
        if failed.item():
            raise RuntimeError(f"a process failed while extracting {name}; nothing was kept")
        if rank == 0:
            np.save(staged / LABELS, labels)
    dist.barrier()                    # the others return once rank 0 has moved the directory into place
    if rank == 0:
        log.info(f"{name}: {len(images)} images x {model.num_taps} layers by {world} processes -> {out}")


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


def _extract_gram_deviations(model, images, out: Path, device, batch_size: int, train_dir: Path, name: str) -> None:
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
    rebuild = f"save_inter_outputs.py --sets {name} --force (with the flags that made {run})"
    layers: List[np.ndarray] = [load_array(d / layer_file(i, "npy"), rebuild, mmap=True)
                                for i in range(manifest["settings"]["taps"])]
    out = {"layers": layers, "logits": load_array(d / LOGITS, rebuild, mmap=True),
           "penultimate": load_array(d / PENULTIMATE, rebuild, mmap=True), "labels": load_array(d / LABELS, rebuild),
           "manifest": manifest}
    if (d / ODIN).exists():
        out["odin"] = load_array(d / ODIN, rebuild)
    if (d / GRAM).exists():
        out["gram"] = load_array(d / GRAM, rebuild)
    if (d / NAC).exists():
        taps = manifest["settings"].get("nac_taps", range(len(manifest["widths"])))
        out["nac"], out["nac_taps"] = load_array(d / NAC, rebuild, mmap=True), list(taps)
        out["nac_widths"] = [manifest["widths"][i] for i in taps]
    if (d / GRAM_BOUNDS).exists():
        out["gram_bounds"] = GramBounds.load(d / GRAM_BOUNDS)
    stages = load_nac_stages(run, name)
    if stages is not None:     # the train split's are for its fitting rows only: kept apart from the row-aligned
        out["nac_stages_fit" if name == "train" else "nac_stages"] = stages
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


NAC_STAGES_VERSION = 1


def save_nac_stages(model, ckpt_sha: str, run: Path, layout: Layout, ind: str, tag: str, names: Sequence[str],
                    device: torch.device, stages: Optional[Sequence[str]] = None, batch_size: int = 128,
                    seed: int = 0) -> List[str]:
    """NAC-UE's stage values as its authors compute them (utils/nac_authors.py), beside the features: per set,
    one ``(N, channels)`` array per stage module in ``run/nac_stages/<set>/``; for the train split only the
    seeded 1,000 images the coverage is counted on. Sets already complete are kept. Returns the modules."""
    stages = list(stages or default_stages(model))
    for name in names:
        images, labels, image_manifest = load_images(layout, ind, tag, name)
        rows = fit_rows(labels, seed) if name == "train" else np.arange(len(images))
        settings = {"checkpoint_sha256": ckpt_sha, "images": image_manifest["settings"], "stages": stages,
                    "version": NAC_STAGES_VERSION, "seed": seed if name == "train" else None}
        out = Layout.nac_stages(run, name)
        if is_complete(out, settings):
            log.info(f"{name}: NAC-UE stage values already complete in {out}")
            continue
        values = stage_products(model, images[rows], stages, device, batch_size, progress=f"{name} (NAC-UE stages)")
        with StagingDir(out, settings, {"count": len(rows)}) as tmp:
            np.save(tmp / "rows.npy", rows)
            for i, stage in enumerate(stages):
                np.save(tmp / f"stage_{i:02d}.npy", values[stage])
        log.info(f"{name}: NAC-UE values of {len(stages)} stages for {len(rows)} images -> {out}")
    return stages


def load_nac_stages(run: Path, name: str) -> Optional[Dict[str, object]]:
    """``{'rows', 'stages' (deepest first), 'names'}`` saved by :func:`save_nac_stages`, or None."""
    d = Layout.nac_stages(run, name)
    manifest = read_json(d / MANIFEST)
    if manifest is None:
        return None
    names = manifest["settings"]["stages"]
    rebuild = f"save_inter_outputs.py --nac-stages --sets {name} (with the flags that made {run})"
    arrays = [load_array(d / f"stage_{i:02d}.npy", rebuild) for i in range(len(names))]
    return {"rows": load_array(d / "rows.npy", rebuild), "stages": arrays[::-1], "names": names[::-1]}
