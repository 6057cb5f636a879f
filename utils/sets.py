"""The sets a run knows by name: the in-distribution sets, the OOD sets in the paper's order, which are near-OOD,
and the names a user may give (``--extra-ood``), which become directory names."""
import re
from pathlib import Path
from typing import Dict, Sequence

from .paths import IND_SPLITS

IND_SETS = ("cifar10", "cifar100")
# The original's OOD sets, then the CIFAR sets (each the other's OOD set): the one list, in the paper's order.
ORIGINAL_OODS = ("lsun", "tiny", "svhn", "dtd", "pure_color")
OOD_SETS = ORIGINAL_OODS + IND_SETS
# Near-OOD: natural images of classes close to CIFAR's (as OpenOOD v1.5 groups them); the others are far-OOD.
NEAR_OODS = ("cifar10", "cifar100", "tiny")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def variant(name: str, description: str) -> str:
    """Which published version of a set a source is, where there are several (``''`` otherwise): LSUN comes
    as ODIN's ``resize`` (whole images downsampled to 32x32) and ``crop`` (32x32 crops) sets."""
    if name != "lsun":
        return ""
    return "resize" if "resize" in description.lower() else "crop"


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_name(name: str, what: str) -> str:
    """``name`` if it is safe as a directory name (letters, digits, ``-``, ``_``), else a clear error."""
    if not _SAFE_NAME.fullmatch(name or ""):
        raise ValueError(f"{what} name {name!r} is not allowed: it becomes a directory name, so use only "
                         f"letters, digits, '-' and '_'")
    return name


def parse_extra(specs: Sequence[str]) -> Dict[str, Path]:
    """``NAME=PATH`` pairs of --extra-ood; names are checked before anything is written."""
    extra = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--extra-ood expects NAME=PATH, got {spec!r}")
        check_name(name, "--extra-ood")
        if name in IND_SPLITS or name in OOD_SETS:
            raise ValueError(f"--extra-ood name {name!r} is reserved; choose another")
        extra[name] = Path(path)
    return extra
