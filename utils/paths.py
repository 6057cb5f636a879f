"""The one place that knows where every artifact lives.

    data/generated/<ind>/<data tag>/<set>/            images.npy (N,32,32,3 uint8), labels.npy, manifest.json
    runs/<ind>/<model>-<ckpt sha[:8]>/<data tag>/
        features/<set>/                               layer_000.npy ... (N, width float32), logits.npy,
                                                      penultimate.npy, manifest.json
        detectors/<detector>[-cal<n>]-seed<s>/        layer_000.joblib ..., selection.csv, [calibration.json,]
                                                      manifest.json
        results/<detector>[-cal<n>]-seed<s>/          <ood set>.csv, summary.csv, summary.md, run.json, *.png

``<set>`` is ``train`` and ``test`` for the in-distribution splits and the OOD set's name otherwise.
The data tag names the subset sizes and seed, and the checkpoint's content hash names the run, so
features of one checkpoint or setting are never read for another.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

IND_SPLITS = ("train", "test")


def data_tag(max_train: Optional[int], max_test: Optional[int], max_ood: Optional[int], seed: int) -> str:
    size = lambda n: "all" if n is None else str(n)  # noqa: E731
    return f"train{size(max_train)}-test{size(max_test)}-ood{size(max_ood)}-seed{seed}"


def layer_file(layer: int, ext: str) -> str:
    return f"layer_{layer:03d}.{ext}"


@dataclass(frozen=True)
class Layout:
    data_root: Path = Path("data/generated")
    runs_root: Path = Path("runs")

    def image_root(self, ind: str, tag: str) -> Path:
        return Path(self.data_root) / ind / tag

    def images(self, ind: str, tag: str, name: str) -> Path:
        return self.image_root(ind, tag) / name

    def run(self, ind: str, model: str, ckpt_sha: str, tag: str) -> Path:
        return Path(self.runs_root) / ind / f"{model}-{ckpt_sha[:8]}" / tag

    @staticmethod
    def features(run: Path, name: str) -> Path:
        return Path(run) / "features" / name

    @staticmethod
    def detector_tag(detector: str, seed: int, calibration_size: int = 0) -> str:
        return f"{detector}{f'-cal{calibration_size}' if calibration_size else ''}-seed{seed}"

    @staticmethod
    def seeds_tag(detector: str, seeds, calibration_size: int = 0) -> str:
        """Names the results of a detector stage repeated over several seeds."""
        return f"{detector}{f'-cal{calibration_size}' if calibration_size else ''}-seeds{'-'.join(map(str, seeds))}"

    @staticmethod
    def detectors(run: Path, tag: str) -> Path:
        return Path(run) / "detectors" / tag

    @staticmethod
    def results(run: Path, tag: str) -> Path:
        return Path(run) / "results" / tag
