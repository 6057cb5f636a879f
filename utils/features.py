"""Stage 2: per-layer features (the library behind ``save_inter_outputs.py``).

Every tap's output is pooled on the device by ``forward_intermediates`` and copied into arrays that
were preallocated on disk (``open_memmap``), so memory stays flat and nothing is stacked per batch.
"""
import contextlib
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from models import Normalization, load_model
from models.generic import is_generic, run_name

from .extraction import extract, preallocate
from .nac_authors import default_stages, fit_rows, stage_products
from .inputs import normalization_of
from .sets import NUM_CLASSES
from .generate import load_images
from .producers import Context, get_producer, list_producers
from .io import StagingDir, atomic_path, is_complete, load_array, read_json, sha256_file
from .paths import LABELS, LOGITS, MANIFEST, PENULTIMATE, Layout, layer_file

log = logging.getLogger(__name__)




def open_backbone(checkpoint, ind, arch: Optional[str] = None, device: torch.device = torch.device("cpu"),
                  normalization: Optional[Normalization] = None, taps: Optional[str] = None,
                  head: Optional[str] = None):
    """The checkpoint's model in eval mode on ``device``, and the checkpoint's sha256. ``ind``: the
    in-distribution set's name (cifar10, cifar100) or its class count. ``taps`` and ``head`` choose the tapped
    modules of torchvision:, timm: and module:factory models (see models/generic.py)."""
    model = load_model(checkpoint, arch, ind if isinstance(ind, int) else NUM_CLASSES[ind], normalization, taps, head)
    return model.to(device).eval(), sha256_file(checkpoint)


def save_features(model, ckpt_sha: str, layout: Layout, ind: str, tag: str, names: Sequence[str],
                  device: torch.device, batch_size: int = 256, force: bool = False, seed: int = 0,
                  precision: str = "fp32", producers: Optional[Dict[str, Dict]] = None) -> Path:
    """Features of every set in ``names`` under the run directory; sets already complete are kept.

    ``producers``: ``{name: options}`` of the stage-2 producers to run beside the tap features (utils/producers:
    ``odin``, ``gram``, ``nac``; :func:`chosen_producers` reads them from the flags). A set's one forward pass is the
    first chosen producer's that ``fuses`` (it writes the features too), else the plain pass; the other producers
    follow. ``precision`` other than fp32 gets its own run directory (see :meth:`Layout.run`)."""
    chosen = {name: dict(opts) for name, opts in (producers or {}).items()}
    for name in chosen:
        get_producer(name)
    if chosen and precision != "fp32":
        raise ValueError(f"--{', --'.join(chosen)} run in float32 only; leave out --precision or those flags")
    rank, world = process_group()
    if world > 1 and chosen:
        raise ValueError(f"--{', --'.join(chosen)} run in one process; start save_inter_outputs.py without torchrun")
    run = layout.run(ind, run_name(model.arch, getattr(model, "taps", None)), ckpt_sha, tag, precision)
    if rank == 0:
        save_head(model, run)
    ordered = [get_producer(p) for p in list_producers() if p in chosen]
    for name in names:
        images, labels, image_manifest = load_images(layout, ind, tag, name)
        active = [p for p in ordered if p.applies(name)]
        settings = {"checkpoint_sha256": ckpt_sha, "arch": model.arch, "images": image_manifest["settings"],
                    "taps": model.num_taps, "normalization": normalization_of(model).as_dict()}
        for p in map(get_producer, list_producers()):
            settings.update(p.settings(model, chosen[p.name], seed) if p in active else p.settings_when_off)
        if is_generic(model.arch):   # which modules were tapped; the registry's models name theirs
            settings.update(tap_spec=model.taps, tap_names=model.tap_names, head=model.head_name)
        if precision != "fp32":   # absent: float32, as every run before the option existed
            settings["precision"] = precision
        out = layout.features(run, name)
        if is_complete(out, settings) and not force:
            log.info(f"{name}: features already complete in {out}")
            continue
        if world > 1:
            _extract_across_ranks(model, images, labels, out, settings, device, batch_size, name, precision)
            continue
        fused = next((p for p in active if p.fuses), None)
        with StagingDir(out, settings, {"count": len(images), "widths": model.tap_widths,
                                          "input_size": int(images.shape[1])}) as tmp:
            ctx = lambda p: Context(model, device, batch_size, seed, name, layout.features(run, "train"),  # noqa: E731
                                    chosen[p.name])
            if fused is not None:
                fused.compute(ctx(fused), images, labels, tmp, fused=True)
            else:
                extract(model, images, tmp, device, batch_size, desc=name, precision=precision)
            np.save(tmp / LABELS, labels)
            for p in active:
                if p is not fused:
                    p.compute(ctx(p), images, labels, tmp, fused=False)
        log.info(f"{name}: {len(images)} images x {model.num_taps} layers -> {out}")
    return run


def chosen_producers(args) -> Dict[str, Dict]:
    """``{producer: options}`` of the producers the flags of ``add_producer_args`` switch on."""
    return {name: opts for name in list_producers() if (opts := get_producer(name).options(args)) is not None}


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
    for producer in map(get_producer, list_producers()):
        producer.load(d, manifest, out, rebuild)
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
