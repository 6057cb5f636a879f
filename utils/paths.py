"""The one place that knows where every artifact lives (the layout is drawn in docs/stages.md#artifact-layout).

Images under ``data/generated/<ind>/<data tag>/<set>/``; features, detectors and results under
``runs/<ind>/<model>-<ckpt sha[:8]>[-bf16]/<data tag>/{features,detectors,results}/``; training runs under
``checkpoints/<ind>-<model>-<schedule>/``. ``<set>`` is ``train`` and ``test`` for the in-distribution splits
and the OOD set's name otherwise. The data tag names the subset sizes and seed, and the checkpoint's content
hash names the run, so features of one checkpoint or setting are never read for another.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

IND_SPLITS = ("train", "test")
MANIFEST = "manifest.json"

# Files inside an image set and a feature set.
IMAGES, LABELS = "images.npy", "labels.npy"
LOGITS, PENULTIMATE, ODIN = "logits.npy", "penultimate.npy", "odin.npy"
NAC = "nac.npy"                                       # NAC-UE's per-channel z * dKL/dz of every tap
GRAM, GRAM_BOUNDS = "gram.npy", "gram_bounds.npz"     # per-tap Gram deviations; train: the bounds
HEAD = "head.npz"
# Files inside a detector directory.
SELECTION, CALIBRATION, CALIBRATION_HELD = "selection.csv", "calibration.json", "calibration_held.npy"
# Files inside a results directory.
SUMMARY_CSV, SUMMARY_MD, RUN_RECORD, EARLY_EXIT = "summary.csv", "summary.md", "run.json", "early_exit.csv"
OVERVIEW_CSV = "overview.csv"     # AUROC per method and set, with near, far and mean
TUNED_SUMMARY_CSV, TUNED_OVERVIEW_CSV, TUNING_JSON = "tuned_summary.csv", "tuned_overview.csv", "tuning.json"
SPREAD_CSV, SPREAD_MD = "spread.csv", "spread.md"
BOOTSTRAP, TUNED_BOOTSTRAP = "bootstrap.npz", "tuned_bootstrap.npz"   # every method's AUROC per set and draw
MARGINS_CSV, TUNED_MARGINS_CSV = "margins.csv", "tuned_margins.csv"   # the first per column, its margins, ties
PER_LAYER_PLOT, ARGMAX_PLOT, HISTOGRAM_PLOT = "per_layer_auroc.png", "argmax_counts.png", "histograms.png"
# Files of a training run.
FINAL, STATE, BEST, TRAIN_LOG = "final.pt", "state.pt", "best.pt", "log.csv"


def data_tag(max_train: Optional[int], max_test: Optional[int], max_ood: Optional[int], seed: int) -> str:
    size = lambda n: "all" if n is None else str(n)  # noqa: E731
    return f"train{size(max_train)}-test{size(max_test)}-ood{size(max_ood)}-seed{seed}"


def layer_file(layer: int, ext: str) -> str:
    return f"layer_{layer:03d}.{ext}"


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def set_table(name: str) -> str:
    """The per-layer table of one OOD set (or ``combined``) in a results directory."""
    return f"{name}.csv"


def roc_plot(name: str) -> str:
    return f"roc_{name}.png"


def scores_file(results: Path, name: str) -> Path:
    """Per-layer OOD scores ``(N, L)`` of one set, saved beside the tables."""
    return Path(results) / "scores" / f"{name}.npy"


@dataclass(frozen=True)
class Layout:
    data_root: Path = Path("data/generated")
    runs_root: Path = Path("runs")
    checkpoints_root: Path = Path("checkpoints")
    collected_root: Path = Path("results")

    def image_root(self, ind: str, tag: str) -> Path:
        return Path(self.data_root) / ind / tag

    def images(self, ind: str, tag: str, name: str) -> Path:
        return self.image_root(ind, tag) / name

    def run(self, ind: str, model: str, ckpt_sha: str, tag: str, precision: str = "fp32") -> Path:
        """A checkpoint's run; features computed in another precision than float32 live in their own
        (``vgg16-ce8d1176-bf16``), so both can be compared and neither is ever read for the other."""
        suffix = "" if precision == "fp32" else f"-{precision}"
        return Path(self.runs_root) / ind / f"{model}-{ckpt_sha[:8]}{suffix}" / tag

    def runs_of(self, ind: str, model: str, tag: str, precision: str = "fp32") -> List[Path]:
        """The runs of every checkpoint of ``model`` with data tag ``tag`` and feature ``precision`` (sorted)."""
        suffix = "" if precision == "fp32" else f"-{precision}"
        name = re.compile(rf"{re.escape(model)}-[0-9a-f]{{8}}{re.escape(suffix)}")
        root = Path(self.runs_root) / ind
        if not root.is_dir():
            return []
        return sorted(d / tag for d in root.iterdir() if name.fullmatch(d.name) and (d / tag).is_dir())

    def training(self, ind: str, model: str, schedule: str) -> Path:
        """Where ``train_backbone_model.py`` writes its checkpoints and log by default."""
        return Path(self.checkpoints_root) / f"{ind}-{model}-{schedule}"

    def collected(self, name: str, ext: str) -> Path:
        """A table collect_results.py writes: paper_table, tuned_table, tuned_order, every_method."""
        return Path(self.collected_root) / f"{name}.{ext}"

    @staticmethod
    def features(run: Path, name: str) -> Path:
        return Path(run) / "features" / name

    @staticmethod
    def nac_stages(run: Path, name: str) -> Path:
        """NAC-UE's stage values as its authors compute them (``save_inter_outputs.py --nac-stages``)."""
        return Path(run) / "nac_stages" / name

    @staticmethod
    def head(run: Path) -> Path:
        return Path(run) / "features" / HEAD

    @staticmethod
    def detector_tag(detector: str, seed: int, calibration_size: int = 0) -> str:
        return f"{detector}{f'-cal{calibration_size}' if calibration_size else ''}-seed{seed}"

    @staticmethod
    def seeds_tag(detector: str, seeds: Sequence[int], calibration_size: int = 0) -> str:
        """Names the results of a detector stage repeated over several seeds."""
        return f"{detector}{f'-cal{calibration_size}' if calibration_size else ''}-seeds{'-'.join(map(str, seeds))}"

    @staticmethod
    def detectors(run: Path, tag: str) -> Path:
        return Path(run) / "detectors" / tag

    @staticmethod
    def results(run: Path, tag: str, tuned: bool = False, split: Optional[int] = None) -> Path:
        """The tables of the detectors ``tag``; ``tuned``: those of a run with a validation split held out
        (``detect_oods.py --tune``), which evaluates fewer images and so lives apart; ``split``: the seed of
        that split where it is not the detectors' seed (``--tune-seeds``)."""
        if not tuned:
            return Path(run) / "results" / tag
        return Path(run) / "results" / (f"{tag}-tuned" + (f"-split{split}" if split is not None else ""))

    @staticmethod
    def split_spread(run: Path, tag: str, splits: Sequence[int]) -> Path:
        """The tuned tables repeated over several validation splits: their mean and standard deviation."""
        return Path(run) / "results" / f"{tag}-tuned-splits{'-'.join(map(str, splits))}"
