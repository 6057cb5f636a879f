"""Stage 3: fit the per-layer detectors and save them (the library behind ``train_ood_detectors.py``).

The fitted detectors are the expensive artifact of this stage, so they are moved into place first;
the selection table that describes them is written after, and a failure there is logged, never allowed
to discard them.
"""
import logging
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .detectors import LAOOD, TAIL_LEVEL, Calibration, load_detector, save_detector
from .features import load_features
from .io import StagingDir, is_complete, read_json, save_npy, write_csv, write_json
from .paths import CALIBRATION, CALIBRATION_HELD, MANIFEST, SELECTION, Layout, layer_file

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = 2   # 2: the held-back indices are stored beside the statistics
REBUILD = "train_ood_detectors.py (same flags) --force"


def detector_settings(checkpoint_sha: str, la: LAOOD, n_train: int) -> Dict:
    """The manifest's settings: the estimator's own (``LAOOD.settings``), the features' checkpoint and size, and
    the calibration's format; detectors whose manifest differs (an older version or file format) are refitted."""
    settings = {"checkpoint_sha256": checkpoint_sha, "n_train": n_train, **la.settings()}
    if la.calibration_size:
        settings.update(tail_level=TAIL_LEVEL, calibration_format=CALIBRATION_FORMAT)
    return settings


def train_detectors(run: Path, la: LAOOD, force: bool = False) -> Path:
    """Fit ``la`` on the run's in-distribution train features and save one ``.npz`` per layer (no pickle)."""
    train = load_features(run, "train")
    sha = train["manifest"]["settings"]["checkpoint_sha256"]
    settings = detector_settings(sha, la, len(train["logits"]))
    out = Layout.detectors(run, la.tag)
    if is_complete(out, settings) and not force:
        log.info(f"detectors already complete in {out}")
        return out
    start = time.time()
    if la.calibration_size:
        la.fit_calibrated(train["layers"])
    else:
        la.fit(train["layers"])
    seconds = time.time() - start
    info = {"layers": len(la.detectors_), "fit_seconds": seconds, "detector_choice": la.choice or la.detector}
    with StagingDir(out, settings, info) as tmp:
        for i, det in enumerate(la.detectors_):
            save_detector(tmp / layer_file(i, "npz"), det, la.detector)
        if la.calibration_ is not None:
            save_calibration(tmp, la.calibration_)
    try:
        write_csv(out / SELECTION, [_flat_record(r) for r in la.records_])
    except Exception as e:   # a summary must never cost the fitted detectors
        log.warning(f"could not write {out / SELECTION} ({type(e).__name__}: {e}); the detectors are saved")
    held = f" ({la.calibration_size} more held back to calibrate)" if la.calibration_size else ""
    log.info(f"{len(la.detectors_)} {la.detector} detectors fitted on {len(train['logits']) - la.calibration_size} "
             f"images{held} in {seconds:.0f}s -> {out}")
    return out


def _flat_record(record: Dict) -> Dict:
    rec = {k: v for k, v in record.items() if k != "errors"}
    for gamma, err in record.get("errors", {}).items():
        rec[f"error@{gamma:g}"] = round(err, 5)
    return rec


def save_calibration(directory: Path, cal: Calibration) -> None:
    write_json(Path(directory) / CALIBRATION, {"mean": cal.mean.tolist(), "std": cal.std.tolist(),
                                               "tail_level": TAIL_LEVEL, "tail": cal.tail.tolist()})
    save_npy(Path(directory) / CALIBRATION_HELD, np.asarray(cal.held, dtype=np.int64))


def load_calibration(directory: Path) -> Optional[Calibration]:
    calib = read_json(Path(directory) / CALIBRATION)
    if calib is None:
        return None
    held = Path(directory) / CALIBRATION_HELD
    return Calibration(np.array(calib["mean"]), np.array(calib["std"]), np.array(calib["tail"]),
                       np.load(held) if held.exists() else None)


def load_detectors(directory: Path, expect_sha: Optional[str] = None, **runtime) -> LAOOD:
    """The fitted per-layer detectors of a directory written by :func:`train_detectors`. Their files hold arrays
    and JSON only; loading them never executes code (detectors of older versions, pickled, are not read).
    ``runtime``: settings of how they run, not of what was fitted (``n_jobs``, ``backend``)."""
    manifest = read_json(Path(directory) / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"no trained detectors in {directory}; run train_ood_detectors.py first")
    s = manifest["settings"]
    if "file_format" not in s:
        raise ValueError(f"detectors in {directory} were written by an older version (pickled files, which are not "
                         f"loaded); refit them with {REBUILD}")
    if expect_sha and s["checkpoint_sha256"] != expect_sha:
        raise ValueError(f"detectors in {directory} were fitted on features of another checkpoint "
                         f"({s['checkpoint_sha256'][:8]}, expected {expect_sha[:8]}); retrain them")
    names = LAOOD().get_params()
    la = LAOOD(**{**{k: (tuple(v) if k == "gammas" else v) for k, v in s.items() if k in names}, **runtime})
    la.calibration_ = load_calibration(directory)
    la.detectors_ = [load_detector(Path(directory) / layer_file(i, "npz"), REBUILD) for i in range(manifest["layers"])]
    return la
