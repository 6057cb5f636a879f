"""Stage 3: fit the per-layer detectors and save them (the library behind ``train_ood_detectors.py``).

The fitted detectors are the expensive artifact of this stage, so they are moved into place first;
the selection table that describes them is written after, and a failure there is logged, never allowed
to discard them.
"""
import logging
import time
from pathlib import Path
from typing import Dict, Optional

import joblib
import numpy as np

from .detectors import APPROX_LANDMARKS, LAOOD, TAIL_LEVEL, Calibration
from .features import load_features
from .io import StagingDir, is_complete, read_json, save_npy, write_csv, write_json
from .paths import CALIBRATION, CALIBRATION_HELD, MANIFEST, SELECTION, Layout, layer_file

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = 2   # 2: the held-back indices are stored beside the statistics
APPROX_SELECTION = 2     # ocsvm-approx's gamma criterion; 2: 1 - AUROC of pseudo-inliers against pseudo-outliers


def detector_settings(checkpoint_sha: str, la: LAOOD, n_train: int) -> Dict:
    settings = {"checkpoint_sha256": checkpoint_sha, "detector": la.detector, "gammas": list(la.gammas),
                "nu": la.nu, "seed": la.seed, "select_size": la.select_size, "prune": la.prune, "n_train": n_train,
                "calibration_size": la.calibration_size}
    if la.detector == "ocsvm-approx":   # the landmarks, and the selection criterion (ranking since v2)
        settings.update(landmarks=la.n_components, approx_selection=APPROX_SELECTION)
    if la.calibration_size:   # calibrations written in an older format are refitted, not trusted
        settings.update(tail_level=TAIL_LEVEL, calibration_format=CALIBRATION_FORMAT)
    return settings


def train_detectors(run: Path, la: LAOOD, force: bool = False) -> Path:
    """Fit ``la`` on the run's in-distribution train features and save one pickle per layer."""
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
            joblib.dump(det, tmp / layer_file(i, "joblib"))
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


def load_detectors(directory: Path, expect_sha: Optional[str] = None) -> LAOOD:
    """The fitted per-layer detectors of a directory written by :func:`train_detectors`."""
    manifest = read_json(Path(directory) / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"no trained detectors in {directory}; run train_ood_detectors.py first")
    s = manifest["settings"]
    if expect_sha and s["checkpoint_sha256"] != expect_sha:
        raise ValueError(f"detectors in {directory} were fitted on features of another checkpoint "
                         f"({s['checkpoint_sha256'][:8]}, expected {expect_sha[:8]}); retrain them")
    la = LAOOD(detector=s["detector"], gammas=s["gammas"], nu=s["nu"], seed=s["seed"],
               select_size=s["select_size"], prune=s["prune"], calibration_size=s.get("calibration_size", 0),
               n_components=s.get("landmarks", APPROX_LANDMARKS))
    la.calibration_ = load_calibration(directory)
    for i in range(manifest["layers"]):
        path = Path(directory) / layer_file(i, "joblib")
        if not path.exists():
            raise FileNotFoundError(f"detector of layer {i} is missing ({path}); retrain with --force")
        la.detectors_.append(joblib.load(path))
    return la
