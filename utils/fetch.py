"""Public archives of the OOD sets torchvision cannot download, fetched with the standard library.

Each archive has a public address and a published checksum. A download goes to a temporary file beside its
destination and is moved into place only once its checksum matches, and an archive is unpacked into a
temporary folder that is renamed into place whole: an interrupted or corrupted fetch leaves nothing that a
later run would read as a dataset.
"""
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    """A dataset archive: where it is published, its file name, ``ALGORITHM:HEX`` checksum, and the folder it
    unpacks to (``None``: read as it is, e.g. a zip archive that the source readers open in place)."""
    url: str
    filename: str
    checksum: str
    unpacks_to: str = None
    source: str = ""


# The checksums are md5, as published beside these addresses (pytorch-ood 0.4's dataset classes record the
# same values); none of these archives has a published sha256.
ARCHIVES = {
    # ODIN's "LSUN (resize)": the 10,000 LSUN test images downsampled to 32x32 (Liang et al., ICLR 2018).
    "lsun": Archive("https://www.dropbox.com/s/raw/moqh2wh8696c3yl/LSUN_resize.tar.gz", "LSUN_resize.tar.gz",
                    "md5:278b7b31c8cb7e804a1465a8ce03a2dc", "LSUN_resize",
                    "ODIN's LSUN (resize), github.com/facebookresearch/odin"),
    # The Tiny ImageNet archive of Stanford's CS231n: its 10,000 test images are the original LA-OOD's `tiny`
    # set (read in place from the zip and resized to 32x32 with LANCZOS, as the original does).
    "tiny": Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                    "md5:90528d7ca1a48142e341f4ef8d21d0de", None, "Tiny ImageNet, cs231n.stanford.edu"),
}


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, path: Path, checksum: str, progress: bool = True, timeout: float = 60) -> Path:
    """Fetch ``url`` to ``path`` and check it against ``checksum`` (``ALGORITHM:HEX``, any of hashlib's); a file
    already there with that checksum is kept. On any failure nothing is left at ``path`` or beside it."""
    path = Path(path)
    algorithm, _, expected = checksum.partition(":")
    if path.exists() and file_digest(path, algorithm) == expected:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        h = hashlib.new(algorithm)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, leave=False,
                      disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise RuntimeError(f"the connection closed after {out.tell():,} of {total:,} bytes")
        if h.hexdigest() != expected:
            raise RuntimeError(f"its {algorithm} is {h.hexdigest()}, not the published {expected}: the file at the "
                               f"address has changed or the transfer was corrupted")
        os.replace(tmp, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError, RuntimeError) as e:
        raise RuntimeError(f"could not download {url} to {path} ({type(e).__name__}: {e}); nothing was kept. "
                           f"Without internet access, fetch the file elsewhere and put it under a --source-root") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def unpack(archive: Path, root: Path, folder: str) -> Path:
    """Unpack a tar archive whose contents lie under ``folder`` into ``root/folder``, renamed into place only
    once every member is out (members that would land outside the folder are refused)."""
    target = Path(root) / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".partial", dir=root))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        inner = staging / folder
        if not inner.is_dir():
            raise RuntimeError(f"{archive} holds no {folder}/ folder; delete it and download again")
        os.replace(inner, target)
    except (tarfile.TarError, OSError) as e:
        raise RuntimeError(f"could not unpack {archive} ({type(e).__name__}: {e}); delete it and download again") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch_archive(name: str, root: Path, progress: bool = True) -> Path:
    """Download the archive of set ``name`` into ``root`` (and unpack it where it must be): afterwards the
    source readers find the set under ``root``. Returns what they will read."""
    if name not in ARCHIVES:
        raise ValueError(f"no public archive is known for {name}; known: {', '.join(sorted(ARCHIVES))}")
    entry = ARCHIVES[name]
    root = Path(root)
    if entry.unpacks_to and (root / entry.unpacks_to).is_dir():
        return root / entry.unpacks_to
    log.info(f"{name}: downloading {entry.source} from {entry.url}")
    path = download(entry.url, root / entry.filename, entry.checksum, progress)
    return unpack(path, root, entry.unpacks_to) if entry.unpacks_to else path
