import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
CHECKPOINTS = SHARED / "checkpoints"
sys.path.insert(0, str(ROOT))


def need(path: Path) -> Path:
    """The shared file, or a failure (not a skip): the shared data is part of the test environment."""
    if not path.exists():
        pytest.fail(f"{path} is missing; the integration tests need ../shared beside the repository")
    return path
