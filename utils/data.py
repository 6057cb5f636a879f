"""Image sources for the in-distribution and OOD sets, read as square RGB ``uint8`` arrays (32x32 by default).

A source is found by looking, under each source root in turn, for the files torchvision's own dataset
classes read (``cifar-10-batches-py``, ``cifar-100-python``, ``test_32x32.mat``, ``dtd/images``, ...)
and for directories or zip archives in ImageFolder layout (the offline archives work as they are).
Listing a source reads no pixels; only the images a subset keeps are decoded.
"""
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from .fetch import ARCHIVES, fetch_archive

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
SIZE = 32


@dataclass
class ImageSource:
    """A set of images that can be decoded by index: ``load(indices) -> (n, size, size, 3) uint8``."""
    description: str
    count: int
    load: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    labels: Optional[np.ndarray] = None
    classes: Optional[List[str]] = None


# ----------------------------------------------------------------------------- decoding

def to_32x32(img: Image.Image) -> np.ndarray:
    """RGB, resized straight to 32x32 with LANCZOS (as the original code resizes OOD images)."""
    img = img.convert("RGB")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def resize_image(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """RGB at ``size`` x ``size``: at 32 straight to 32x32 with LANCZOS (the original's way, kept so CIFAR
    runs are unchanged); at any other size as torchvision's classification presets do: the shorter side
    resized to ``size`` (bilinear, antialiased), then the centre ``size`` x ``size`` crop."""
    if size == SIZE:
        return to_32x32(img)
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(data: bytes, where: str, size: int = SIZE) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return resize_image(img, size)
    except Exception as e:
        raise ValueError(f"cannot read image {where}: {e}. Replace or remove the file and run again.") from e


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS) and not Path(name).name.startswith(".")


def _folder_layout(rel_paths: Sequence[str]):
    """ImageFolder semantics: files one directory below the root are labelled by that directory. Directories
    every file lies under (an archive's ``dtd/images/``) are looked through first."""
    parts = [p.split("/") for p in rel_paths]
    while parts and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    if all(len(p) >= 2 for p in parts):
        classes = sorted({p[0] for p in parts})
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[p[0]] for p in parts], dtype=np.int64), classes
    return None, None


def folder_source(root: Path, prefix: str = "", size: int = SIZE) -> ImageSource:
    """Images under ``root/prefix``, where ``root`` is a directory or a zip archive, decoded at ``size``."""
    root = Path(root)
    prefix = prefix.strip("/")
    if zipfile.is_zipfile(root) if root.is_file() else False:
        zf = zipfile.ZipFile(root)
        head = f"{prefix}/" if prefix else ""
        members = sorted(n for n in zf.namelist() if n.startswith(head) and _is_image(n))
        rel = [m[len(head):] for m in members]
        where = f"{root}:{prefix or '/'}"

        def load(idx):
            with zipfile.ZipFile(root) as z:
                return np.stack([_decode(z.read(members[i]), f"{members[i]} in {root}", size) for i in idx])
    elif root.is_file():
        raise ValueError(f"{root} is neither a directory nor a valid zip archive")
    else:
        base = root / prefix if prefix else root
        if not base.is_dir():
            raise FileNotFoundError(f"image folder {base} does not exist")
        files = sorted(p for p in base.rglob("*") if p.is_file() and _is_image(p.name))
        rel = [p.relative_to(base).as_posix() for p in files]
        where = str(base)

        def load(idx):
            return np.stack([_decode(files[i].read_bytes(), str(files[i]), size) for i in idx])
    if not rel:
        raise ValueError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTS)})")
    labels, classes = _folder_layout(rel)
    return ImageSource(where, len(rel), load, labels, classes)


def split_prefix(root: Path, split: str) -> Optional[str]:
    """Where a labelled folder or zip keeps its ``split`` (``train``/``test``): ``split`` itself, or under the
    one directory everything lies in (``mydata/train``); None if it has no such folder."""
    root = Path(root)
    if root.is_dir():
        if (root / split).is_dir():
            return split
        subdirs = [p for p in root.iterdir() if p.is_dir()]
        return f"{subdirs[0].name}/{split}" if len(subdirs) == 1 and (subdirs[0] / split).is_dir() else None
    if root.is_file() and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as z:
            names = [n for n in z.namelist() if _is_image(n)]
        if any(n.startswith(f"{split}/") for n in names):
            return split
        tops = {n.split("/")[0] for n in names}
        if len(tops) == 1 and any(n.startswith(f"{next(iter(tops))}/{split}/") for n in names):
            return f"{next(iter(tops))}/{split}"
    return None


def array_source(description: str, images: np.ndarray, labels: Optional[np.ndarray] = None,
                 classes: Optional[List[str]] = None, size: int = SIZE) -> ImageSource:
    """Images already in memory; resized per image (:func:`resize_image`) when ``size`` is not theirs."""
    if images.shape[1:3] == (size, size):
        return ImageSource(description, len(images), lambda idx: images[idx], labels, classes)
    return ImageSource(description, len(images), lambda idx: np.stack([resize_image(Image.fromarray(images[i]), size)
                                                                      for i in idx]), labels, classes)


def subset_source(source: ImageSource, idx: np.ndarray, description: str) -> ImageSource:
    """The images ``idx`` of ``source`` as a source of their own."""
    idx = np.asarray(idx)
    return ImageSource(description, len(idx), lambda i: source.load(idx[np.asarray(i)]),
                       None if source.labels is None else source.labels[idx], source.classes)


def cifar_pickle_source(directory: Path, split: str, size: int = SIZE) -> ImageSource:
    """torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` pickles."""
    directory = Path(directory)
    cifar100 = directory.name == "cifar-100-python"
    if cifar100:
        files, key, meta, names = [split], "fine_labels", "meta", "fine_label_names"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key, meta, names = "labels", "batches.meta", "label_names"
    data, labels = [], []
    for name in files:
        try:
            with open(directory / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
        except Exception as e:
            raise ValueError(f"cannot read CIFAR batch {directory / name}: {e}") from e
        data.append(entry["data"])
        labels += entry[key]
    images = np.concatenate(data).reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1)
    classes = None
    if (directory / meta).exists():
        with open(directory / meta, "rb") as f:
            classes = pickle.load(f, encoding="latin1")[names]
    return array_source(f"{directory} ({split})", np.ascontiguousarray(images), np.array(labels), classes, size)


def svhn_source(path: Path, size: int = SIZE) -> ImageSource:
    from scipy.io import loadmat
    try:
        mat = loadmat(path)
    except Exception as e:
        raise ValueError(f"cannot read SVHN file {path}: {e}") from e
    images = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2))
    return array_source(str(path), images, mat["y"].ravel().astype(np.int64) % 10, size=size)


def pure_color_source(n: int = 10000, seed: int = 0, size: int = SIZE) -> ImageSource:
    """``n`` images, each filled with one uniformly random RGB colour (seeded)."""
    colors = np.random.default_rng(seed).integers(0, 256, size=(n, 1, 1, 3), dtype=np.uint8)
    return array_source(f"generated (seed {seed})", np.broadcast_to(colors, (n, size, size, 3)), size=size)


# ----------------------------------------------------------------------------- discovery

# For each set: (folder or archive prefixes, archive name patterns, how to get it).
_FOLDERS = {
    "cifar10": (["cifar10/{split}", "CIFAR10/{split}"], ["cifar10*.zip", "cifar-10*.zip"],
                "torchvision.datasets.CIFAR10(root, download=True) or --download"),
    "cifar100": (["cifar100/{split}", "CIFAR100/{split}"], ["cifar100*.zip", "cifar-100*.zip"],
                 "torchvision.datasets.CIFAR100(root, download=True) or --download; offline, rebuild the official "
                 "train and test splits with cifar100_official.py (docs/stages.md, 'CIFAR-100 offline') and add the "
                 "folder that holds its cifar100.zip with --source-root"),
    "tiny": (["tiny-imagenet-200/test/images", "tiny-imagenet-200/test", "tiny/test"], ["tiny*.zip"],
             "--download, or the Tiny ImageNet zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped or "
             "as it is"),
    "dtd": (["dtd/dtd/images", "dtd/images"], ["dtd*.zip"],
            "torchvision.datasets.DTD(root, download=True) or --download"),
    # ODIN's two LSUN test sets (Liang et al. 2018): "LSUN (resize)" first, as the original code resizes the
    # whole LSUN test images to 32x32; then the crop layout.
    "lsun": (["LSUN_resize", "lsun-resize", "LSUN/test", "LSUN", "lsun/test", "lsun"], ["LSUN*.zip", "lsun*.zip"],
             "--download, or ODIN's LSUN (resize) archive (https://github.com/facebookresearch/odin) extracted to "
             "LSUN_resize/ (or zipped), or its crop set extracted to LSUN/"),
    "svhn": ([], [], "torchvision.datasets.SVHN(root, split='test', download=True) or --download"),
}


def _zip_has_prefix(path: Path, prefix: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.startswith(prefix + "/") and _is_image(n) for n in z.namelist())
    except zipfile.BadZipFile as e:
        raise ValueError(f"archive {path} is not a valid zip file ({e}); download it again") from e


def find_source(name: str, split: str, roots: Sequence[Path], size: int = SIZE) -> Tuple[Optional[ImageSource], str]:
    """The first source of ``name``/``split`` under ``roots`` (decoded at ``size``), and a line saying what
    was looked for."""
    if name not in _FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_FOLDERS))} and pure_color")
    prefixes, patterns, how = _FOLDERS[name]
    prefixes = [p.format(split=split) for p in prefixes]
    torchvision_dirs = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
    for root in map(Path, roots):
        if name in torchvision_dirs and (root / torchvision_dirs[name]).is_dir():
            return cifar_pickle_source(root / torchvision_dirs[name], split, size), ""
        if name == "svhn":
            for candidate in (root / "test_32x32.mat", root / "svhn" / "test_32x32.mat"):
                if candidate.is_file():
                    return svhn_source(candidate, size), ""
        for prefix in prefixes:
            if (root / prefix).is_dir():
                return folder_source(root / prefix, size=size), ""
        for pattern in patterns:
            for archive in sorted(root.glob(pattern)):
                for prefix in prefixes:
                    if _zip_has_prefix(archive, prefix):
                        return folder_source(archive, prefix, size), ""
    wanted = ([torchvision_dirs[name]] if name in torchvision_dirs else []) + \
             (["test_32x32.mat"] if name == "svhn" else []) + prefixes + patterns
    return None, (f"{name} ({split}): no source under {', '.join(map(str, roots))} "
                  f"(looked for {', '.join(wanted)}); get it with {how}")


# The sets torchvision's own dataset classes download: (class name, keyword arguments of a split).
_TORCHVISION = {"cifar10": ("CIFAR10", lambda split: {"train": split == "train"}),
                "cifar100": ("CIFAR100", lambda split: {"train": split == "train"}),
                "svhn": ("SVHN", lambda split: {"split": "test"}),
                "dtd": ("DTD", lambda split: {"split": "test"})}
DOWNLOADABLE = (*_TORCHVISION, *ARCHIVES)


def download_source(name: str, split: str, root: Path, size: int = SIZE) -> ImageSource:
    """Fetch a set into ``root`` (needs the internet), then read it like any source: CIFAR-10/100, SVHN and DTD
    with torchvision's own download, LSUN (resize) and Tiny ImageNet from their public archives
    (:mod:`utils.fetch`, checksums checked)."""
    import torchvision.datasets as tvd
    root = Path(root)
    if name in ARCHIVES:
        fetch_archive(name, root)
    elif name in _TORCHVISION:
        cls, kwargs = _TORCHVISION[name]
        try:
            getattr(tvd, cls)(root, download=True, **kwargs(split))
        except Exception as e:
            raise RuntimeError(f"could not download {name} with torchvision into {root} ({type(e).__name__}: {e}); "
                               f"without internet access put its files under a --source-root instead") from e
    else:
        raise ValueError(f"no download is known for {name}; known: {', '.join(DOWNLOADABLE)}")
    source, missing = find_source(name, split, [root, root / "dtd"], size)
    if source is None:
        raise RuntimeError(f"downloaded {name} but could not read it: {missing}")
    return source


# ----------------------------------------------------------------------------- subsets

def subset_indices(count: int, n: Optional[int], seed: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """A seeded random subset of ``n`` of ``count`` indices (sorted), stratified by class when labelled.

    Never the first ``n``: the archives are sorted by class. Each class gets its share of ``n`` by the
    largest-remainder rule, so class proportions are kept to within one image.
    """
    if n is None or n >= count:
        return np.arange(count)
    if n <= 0:
        raise ValueError(f"a subset must hold at least one image, not {n}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(count, size=n, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / count
    take = np.floor(share).astype(int)
    extra = n - take.sum()
    take[np.argsort(-(share - take), kind="stable")[:extra]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def load_subset(source: ImageSource, n: Optional[int], seed: int, desc: str = "",
                progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Decode a seeded subset of ``source``: ``(images uint8 (n,32,32,3), labels int64 (-1 if none))``."""
    idx = subset_indices(source.count, n, seed, source.labels)
    chunks = [source.load(idx[i:i + 1000]) for i in tqdm(range(0, len(idx), 1000), desc=desc, unit="k img",
                                                          leave=False, disable=not progress)]
    images = np.concatenate(chunks) if chunks else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    labels = source.labels[idx] if source.labels is not None else np.full(len(idx), -1, dtype=np.int64)
    return images, labels


class _Chunks:
    """Chunks of a source's images, for a DataLoader whose workers decode them in parallel."""

    def __init__(self, source: ImageSource, chunks: List[np.ndarray]):
        self.source, self.chunks = source, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return self.source.load(self.chunks[i])


def _as_is(x):
    return x


def write_subset(source: ImageSource, n: Optional[int], seed: int, path: Path, size: int = SIZE, desc: str = "",
                 progress: bool = True, workers: int = 0, chunk: int = 1000) -> np.ndarray:
    """Decode the seeded subset of :func:`load_subset` straight into a ``.npy`` file at ``path``, chunk by
    chunk (``workers`` DataLoader processes decode ahead): the set is never held in memory whole. Returns
    the subset's labels (-1 where there are none)."""
    from torch.utils.data import DataLoader
    idx = subset_indices(source.count, n, seed, source.labels)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(idx), size, size, 3))
    chunks = [idx[i:i + chunk] for i in range(0, len(idx), chunk)]
    loader = DataLoader(_Chunks(source, chunks), batch_size=None, collate_fn=_as_is, num_workers=workers)
    start = 0
    for images in tqdm(loader, total=len(chunks), desc=desc, unit="k img", leave=False, disable=not progress):
        out[start:start + len(images)] = images
        start += len(images)
    out.flush()
    del out
    return source.labels[idx] if source.labels is not None else np.full(len(idx), -1, dtype=np.int64)
