"""Atomic writes and manifests: an interrupted stage never leaves a file a later stage would trust.

Every artifact is written to a temporary name in its own directory and moved into place with
``os.replace``; a directory of arrays is complete only once its ``manifest.json`` exists and matches.
"""
import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

from .paths import MANIFEST


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def load_array(path, rebuild: str, mmap: bool = False) -> np.ndarray:
    """``np.load`` of an artifact (memory-mapped with ``mmap``, never unpickling); a file that is missing, cut
    short or not an array gives an error that names it and ``rebuild``, the command that makes it again."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}): the file is damaged or incomplete; "
                         f"rebuild it with {rebuild}") from None


def save_torch(path, obj: Any) -> None:
    """``torch.save`` through :func:`atomic_path` (checkpoints and resumable training state)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(model, path, **extra) -> None:
    """Write ``{'arch', 'num_classes', 'normalization', 'state_dict', ['taps', 'head'], **extra}``: everything
    needed to rebuild the model and feed it (:func:`models.load_model` reads it back)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tapped = {}
    if getattr(model, "taps", None) is not None:     # a torchvision:/timm:/module: network: how it was tapped
        tapped = {"taps": model.taps, "head": model.head_name[len("net."):]}
    save_torch(path, {"arch": model.arch, "num_classes": model.num_classes,
                      "normalization": model.normalization.as_dict(), "state_dict": state, **tapped, **extra})


def export_half(src, dst) -> None:
    """Write checkpoint ``src`` again as ``dst`` with its floating tensors in float16 (half the size; they load
    into a float32 model, see ``models.load_model``)."""
    obj = torch.load(src, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_torch(dst, {**obj, "state_dict": half} if "state_dict" in obj else half)


def columns(rows: Iterable[Dict[str, Any]]) -> List[str]:
    """Every key of every row, in order of first appearance (rows may have different keys)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_csv(path, rows: List[Dict[str, Any]]) -> None:
    """Write a whole table at once (never appended row by row). Rows may have different keys: the
    columns are their union, and a row lacking one leaves its cell empty."""
    if not rows:
        raise ValueError(f"refusing to write an empty table to {path}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path) -> List[Dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`: numbers as floats, empty cells as None, other text as is."""
    def value(v):
        if v in ("", None):
            return None
        try:
            return float(v)
        except ValueError:
            return v
    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_complete(directory, settings: Dict[str, Any]) -> bool:
    """True when ``directory`` holds a manifest written for exactly these settings."""
    manifest = read_json(Path(directory) / MANIFEST)
    return manifest is not None and manifest.get("settings") == json.loads(json.dumps(settings, default=str))


class StagingDir:
    """Build a directory under a temporary name and swap it into place whole, manifest last.

    >>> with StagingDir(final) as tmp:
    ...     np.save(tmp / "a.npy", a)
    ...     # on success, final/ is replaced by tmp/ plus manifest.json
    """

    def __init__(self, final, settings: Dict[str, Any], info: Optional[Dict[str, Any]] = None):
        self.final = Path(final)
        self.settings, self.info = settings, dict(info or {})

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.{os.getpid()}.", suffix=".partial",
                                         dir=self.final.parent))
        self.tmp.chmod(0o777 & ~_umask())       # as mkdir would make it, not mkdtemp's private 0700
        return self.tmp

    def _remove_abandoned(self) -> None:
        """Delete staging directories of this target left by processes that were killed and no longer run
        (a hard kill skips ``__exit__``); those of live processes are left alone."""
        for path in self.final.parent.glob(f".{self.final.name}.*.partial"):
            pid = path.name[len(self.final.name) + 2:].split(".")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        write_json(self.tmp / MANIFEST, {"settings": self.settings, **self.info})
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def format_table(rows: Iterable[Dict[str, Any]], floatfmt: str = "{:.2f}") -> str:
    """A Markdown table of dict rows (floats formatted)."""
    rows = list(rows)
    cols = columns(rows)
    fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
