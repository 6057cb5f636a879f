"""Stage 1: make the evaluation images (the library behind ``generate_datasets.py``)."""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import (DOWNLOADABLE, SIZE, download_source, find_source, folder_source, pure_color_source, split_prefix,
                   subset_indices, subset_source, write_subset)
from .sets import IND_SETS, NUM_CLASSES, OOD_SETS, ORIGINAL_OODS, variant
from .io import StagingDir, is_complete, load_array, read_json
from .paths import IMAGES, IND_SPLITS, LABELS, MANIFEST, Layout, data_tag

log = logging.getLogger(__name__)

MAX_OOD = 10000   # an OOD set larger than this is cut to a seeded random 10,000


def default_oods(ind: str) -> List[str]:
    """The original's five OOD sets plus the other CIFAR."""
    return list(ORIGINAL_OODS) + [s for s in IND_SETS if s != ind]


@dataclass
class DataConfig:
    ind: str = "cifar10"
    oods: Optional[Sequence[str]] = None
    extra: Optional[Dict[str, Path]] = None
    roots: Sequence[Path] = (Path("data/raw"),)
    max_train: Optional[int] = None
    max_test: Optional[int] = None
    max_ood: Optional[int] = MAX_OOD
    seed: int = 0
    download: bool = False
    ind_path: Optional[Path] = None   # --ind NAME=PATH: a labelled image folder or zip archive
    image_size: int = SIZE
    test_fraction: float = 0.2        # of a folder with one split, held out (seeded, stratified) as the test split
    splits: Sequence[str] = IND_SPLITS  # the in-distribution splits to make (an evaluation needs only the test split)

    @property
    def tag(self) -> str:
        size = f"-size{self.image_size}" if self.image_size != SIZE else ""
        return data_tag(self.max_train, self.max_test, self.max_ood, self.seed) + size

    def ind_split(self, split: str):
        """``(source, description)`` of an in-distribution split of a folder set: its ``train/`` and ``test/``
        class folders, or, for a folder of class folders only, a seeded class-stratified split of it."""
        root = Path(self.ind_path)
        if not root.exists():
            raise FileNotFoundError(f"--ind {self.ind}={root}: no such folder or archive")
        prefix = split_prefix(root, split)
        if prefix is not None:
            return folder_source(root, prefix, self.image_size), split
        whole = folder_source(root, "", self.image_size)
        if whole.labels is None:
            raise ValueError(f"--ind {self.ind}={root}: expected train/ and test/ folders of class folders, or class "
                             f"folders (ImageFolder layout)")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"--test-fraction must lie between 0 and 1, not {self.test_fraction}")
        test = subset_indices(whole.count, round(self.test_fraction * whole.count), self.seed, whole.labels)
        idx = test if split == "test" else np.setdiff1d(np.arange(whole.count), test)
        how = f"{split} ({'' if split == 'test' else '1 - '}{self.test_fraction:g} of a seeded stratified split)"
        return subset_source(whole, idx, f"{whole.description} [{how}]"), how

    def num_classes(self) -> int:
        """Classes of the in-distribution set: known for CIFAR, read off a folder set's class folders."""
        if self.ind_path is None:
            return NUM_CLASSES[self.ind]
        source, _ = self.ind_split("train")
        if not source.classes:
            raise ValueError(f"--ind {self.ind}={self.ind_path}: the train images are not in class folders")
        return len(source.classes)

    def set_names(self) -> List[str]:
        oods = default_oods(self.ind) if self.oods is None else list(self.oods)
        return list(self.splits) + oods + list(self.extra or {})


def _source_for(cfg: DataConfig, name: str):
    """Returns ``(source, split, limit)`` for a set name, or ``(None, message, None)`` if it is absent."""
    if name in IND_SPLITS:
        dataset, split = cfg.ind, name
        limit = cfg.max_train if name == "train" else cfg.max_test
        if cfg.ind_path is not None:
            source, split = cfg.ind_split(name)
            return source, split, limit
    elif cfg.extra and name in cfg.extra:
        return folder_source(cfg.extra[name], size=cfg.image_size), "test", cfg.max_ood
    elif name == "pure_color":
        return pure_color_source(cfg.max_ood or MAX_OOD, cfg.seed, cfg.image_size), "test", cfg.max_ood
    elif name in OOD_SETS:
        if name == cfg.ind:
            raise ValueError(f"{name} is the in-distribution set; it cannot also be an OOD set")
        dataset, split, limit = name, "test", cfg.max_ood
    else:
        raise ValueError(f"unknown set {name!r}; OOD sets are {', '.join(OOD_SETS)} or --extra-ood NAME=PATH")
    source, missing = find_source(dataset, split, cfg.roots, cfg.image_size)
    if source is None and cfg.download and dataset in DOWNLOADABLE:
        source = download_source(dataset, split, Path(cfg.roots[0]), cfg.image_size)
    return source, (split if source is not None else missing), limit


def generate(cfg: DataConfig, layout: Layout = Layout(), force: bool = False) -> Dict[str, dict]:
    """Write every set of ``cfg`` that is not already complete; returns each written set's manifest.

    A missing OOD set is skipped with one line saying what was looked for; a missing in-distribution
    split is an error.
    """
    if cfg.ind not in IND_SETS and cfg.ind_path is None:
        raise ValueError(f"unknown in-distribution set {cfg.ind!r}; choose one of {', '.join(IND_SETS)}, or a "
                         f"labelled folder with --ind NAME=PATH")
    done = {}
    for name in cfg.set_names():
        out = layout.images(cfg.ind, cfg.tag, name)
        source, split, limit = _source_for(cfg, name)
        if source is None:
            if name in IND_SPLITS:
                raise FileNotFoundError(f"in-distribution set {split}")
            log.info(f"skipping {split}")
            continue
        settings = {"set": name, "source": source.description, "split": split, "limit": limit, "seed": cfg.seed}
        if cfg.image_size != SIZE:   # absent: 32x32, as every set made before the option existed
            settings["size"] = cfg.image_size
        if is_complete(out, settings) and not force:
            log.info(f"{name}: already complete in {out}")
            done[name] = read_json(out / MANIFEST)
            continue
        info = {"available": int(source.count), "classes": source.classes, "ind": cfg.ind,
                "variant": variant(name, source.description), "input_size": cfg.image_size}
        staging = StagingDir(out, settings, info)
        with staging as tmp:
            # Decoded chunk by chunk into the file (2 worker processes for large sets): never whole in memory.
            labels = write_subset(source, limit, cfg.seed, tmp / IMAGES, cfg.image_size, desc=name,
                                  workers=2 if source.count > 20000 else 0)
            np.save(tmp / LABELS, labels)
            info["count"] = staging.info["count"] = int(len(labels))
        log.info(f"{name}: {len(labels)} of {source.count} images from {source.description} -> {out}")
        done[name] = {"settings": settings, **info}
    return done


def load_images(layout: Layout, ind: str, tag: str, name: str):
    """``(images, labels, manifest)`` of a generated set, or a clear error if it was never made."""
    d = layout.images(ind, tag, name)
    manifest = read_json(d / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"no generated images for set {name!r} in {d}; run generate_datasets.py "
                                f"with the same --ind and subset flags first")
    rebuild = f"generate_datasets.py --force (with the --ind and subset flags that made {d.parent})"
    return load_array(d / IMAGES, rebuild, mmap=True), load_array(d / LABELS, rebuild), manifest


def generated_sets(layout: Layout, ind: str, tag: str) -> List[str]:
    """Names of the OOD sets generated for ``ind`` under ``tag``, in a stable order."""
    base = layout.image_root(ind, tag)
    names = sorted(p.name for p in base.glob("*") if (p / MANIFEST).exists()) if base.is_dir() else []
    return [n for n in names if n not in IND_SPLITS]
