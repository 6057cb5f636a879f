"""Shared test helpers and the tiers.

Markers (pytest.ini): ``shared`` for tests that read ../shared (the offline datasets and checkpoints beside
the repository), ``slow`` for the full-size checks. Without ../shared the ``shared`` tests skip with a line
naming the missing file; with ``LAOOD_REQUIRE_SHARED=1`` (set by .ci/run) a missing file fails them instead.
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
CHECKPOINTS = SHARED / "checkpoints"
STRICT = os.environ.get("LAOOD_REQUIRE_SHARED") == "1"
_running = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _running["item"] = item


def need(path: Path) -> Path:
    """The shared file, else a skip that names it (a failure under ``LAOOD_REQUIRE_SHARED=1``). Only tests marked
    ``shared`` may ask, so ``-m "not shared"`` selects exactly the tests that run on a bare clone."""
    item = _running.get("item")
    if item is not None and item.get_closest_marker("shared") is None:
        pytest.fail(f"{item.nodeid} reads {path} but is not marked @pytest.mark.shared")
    if not path.exists():
        message = (f"needs {path}: the offline datasets and checkpoints in ../shared beside the repository "
                   f"(README, 'Data and checkpoints', says where each comes from)")
        if STRICT:
            pytest.fail(f"{message}; LAOOD_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(message)
    return path


def image_folder(root: Path, classes: int = 3, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """An ImageFolder of ``train/`` and ``test/`` class folders whose classes a small network can tell apart:
    class ``c`` is noise around its own colour (PNG, lossless), seeded."""
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(classes, 3))
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(palette[c] + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root
