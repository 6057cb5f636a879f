"""Atomic artifact directories: swapped in whole, old ones kept on failure, abandoned staging cleaned."""
import os
import subprocess
import sys

import pytest

from utils.io import StagingDir, format_table, is_complete, write_csv
from utils.paths import MANIFEST


def test_staging_dir_swaps_in_whole_and_keeps_the_old_on_failure(tmp_path):
    final = tmp_path / "detectors"
    with StagingDir(final, {"seed": 0}) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first" and is_complete(final, {"seed": 0})
    with pytest.raises(RuntimeError):
        with StagingDir(final, {"seed": 1}) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("killed half-way")
    assert (final / "a.txt").read_text() == "first" and is_complete(final, {"seed": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detectors"]      # no staging left behind
    assert (final / MANIFEST).exists()


def test_a_staged_directory_has_the_permissions_mkdir_gives(tmp_path):
    """Not mkdtemp's 0700: other users of a shared machine read the runs as they read any directory."""
    old = os.umask(0o027)
    try:
        with StagingDir(tmp_path / "features", {}) as tmp:
            (tmp / "a.txt").write_text("x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert (tmp_path / "features").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o750


def test_abandoned_staging_of_dead_processes_is_removed(tmp_path):
    final = tmp_path / "features"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    abandoned = tmp_path / f".features.{dead_pid}.x1y2.partial"     # as a hard-killed run leaves it
    live = tmp_path / f".features.{os.getppid()}.x3y4.partial"       # another run still writing
    other = tmp_path / f".detectors.{dead_pid}.x5y6.partial"         # another target: not ours to touch
    for d in (abandoned, live, other):
        d.mkdir()
        (d / "layer_000.npy").write_bytes(b"half")
    with StagingDir(final, {"n": 1}) as tmp:
        assert str(os.getpid()) in tmp.name
        assert not abandoned.exists() and live.exists() and other.exists()
    assert is_complete(final, {"n": 1})


def test_write_csv_takes_the_union_of_the_rows_keys(tmp_path):
    """Layers that tried different gammas give selection rows with different keys (DenseNet's wider grid)."""
    rows = [{"layer": 0, "error@0.1": 0.2}, {"layer": 1, "error@0.1": 0.3, "error@1": 0.1}]
    write_csv(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text().splitlines() == ["layer,error@0.1,error@1", "0,0.2,", "1,0.3,0.1"]
    assert format_table(rows).splitlines()[2] == "| 0 | 0.20 |  |"
