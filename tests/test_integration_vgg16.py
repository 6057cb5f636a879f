"""The whole pipeline on the real data with the shared VGG16, against the original code's figures.

The original code, run on the shared VGG16's features with 10,000 seeded train features of cifar10.zip
and the full test split and OOD sets, gives these LA-OOD AUROCs. CI runs run_pipeline.py with the same
10,000 train features but 2,000-image test and OOD subsets (seed 0), to stay within its time.

Tolerances come from the spread of this exact configuration over seeds 0-5 (the seed moves the train,
test and OOD subsets and the 70/30 split), measured with the full-size features of this machine:

    set         seeds 0..5                               mean    sd     tolerance max(1, 3 sd)
    tiny        71.32 71.74 71.22 68.32 72.53 71.41   71.09   1.44   4.31
    dtd         92.67 93.06 92.27 92.71 92.53 92.35   92.60   0.28   1.00
    cifar100    63.91 65.55 63.69 62.68 63.87 64.16   63.98   0.93   2.78
    pure_color  99.92 100.0 99.85 99.88 99.97 99.88   99.92   0.06   1.00

The spread's cifar100 column was measured with a 10,000-image CIFAR-100 draw that mixed train and test images
(../shared/data/README.md; the original gave 63.61 there); the reference below is the original on the official
test split (63.66, as ../shared/data/README.md states). Seed 0, which CI runs, gives 71.32 / 92.67 / 64.24 /
99.92 on the official split: each within 1.0 point of the original.
"""

import numpy as np
import pytest

import detect_oods
import run_pipeline
import train_ood_detectors
from conftest import CHECKPOINTS, DATA, need

pytestmark = [pytest.mark.shared, pytest.mark.slow]

ORIGINAL = {"tiny": 71.21, "dtd": 92.15, "cifar100": 63.66, "pure_color": 99.85}
TOLERANCE = {"tiny": 4.31, "dtd": 1.0, "cifar100": 2.78, "pure_color": 1.0}   # max(1, 3 sd), from the table above


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("vgg16")
    common = ["--checkpoint", str(need(CHECKPOINTS / "vgg16-cifar10.pt")), "--model", "vgg16", "--ind", "cifar10",
              "--source-root", str(need(DATA)), "--data-root", str(root / "gen"), "--runs-root", str(root / "runs"),
              "--max-train", "10000", "--max-test", "2000", "--max-ood", "2000", "--seed", "0", "--jobs", "2"]
    rows = run_pipeline.main(run_pipeline.get_args_parser().parse_args(
        common + ["--ood", "tiny", "dtd", "cifar100", "pure_color"]))
    return common, rows


def test_vgg16_pipeline_reproduces_the_original(quick):
    _, rows = quick
    summary = {row["ood"]: row for row in rows if row["method"] == "LA-OOD"}
    assert set(summary) == set(ORIGINAL) | {"combined"}
    for name, reference in ORIGINAL.items():
        got = summary[name]["auroc"]
        assert abs(got - reference) <= TOLERANCE[name], f"{name}: {got:.2f} vs the original's {reference}"
    # Far-OOD is caught early, near-OOD is hard: the ordering the paper's method is known for.
    assert summary["pure_color"]["auroc"] > summary["dtd"]["auroc"] > summary["tiny"]["auroc"] > \
        summary["cifar100"]["auroc"]


def test_tail_plus_energy_beats_energy_and_laood(quick):
    """The layer-adaptive variant at this reduced size (detectors on 8,000 train images, 2,000 held back):
    no set more than a point below the best of MSP, Energy and LA-OOD, and 1.5 points above the better of
    Energy and LA-OOD on average. Seed 0 measured: tail + Energy 89.73 / 96.69 / 87.88 / 99.93 (mean
    93.56) against Energy 88.86 / 90.86 / 88.05 / 98.62 (91.60) and LA-OOD 71.61 / 92.78 / 63.35 / 99.87."""
    common, _ = quick
    train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(common + ["--calibration-size", "2000"]))
    rows = detect_oods.main(detect_oods.get_args_parser().parse_args(
        common + ["--calibration-size", "2000", "--methods", "LA-OOD", "MSP", "Energy", "LA-OOD tail + Energy"]))
    auroc = {(r["ood"], r["method"]): r["auroc"] for r in rows}
    sets = list(ORIGINAL)
    for name in sets:
        best = max(auroc[(name, m)] for m in ("MSP", "Energy", "LA-OOD"))
        assert auroc[(name, "LA-OOD tail + Energy")] >= best - 1.0, name
    mean = lambda method: np.mean([auroc[(n, method)] for n in sets])  # noqa: E731
    assert mean("LA-OOD tail + Energy") >= max(mean("Energy"), mean("LA-OOD")) + 1.5
