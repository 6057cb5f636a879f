"""Where a stage's inputs are: the run directory of a checkpoint and the data flags, and the detectors the flags ask
for (``--detector auto`` resolved by the size of the run's train features)."""
import logging
from pathlib import Path

from models import get_recipe, read_checkpoint
from models.generic import run_name

from .cli import data_config, layout
from .detectors import GAMMAS, LAOOD
from .io import read_json, sha256_file
from .paths import MANIFEST, Layout


def la_ood(args, arch: str, run: Path) -> LAOOD:
    """The detector stage the flags ask for (``LAOOD.from_flags``), the gamma grid defaulting to the model recipe's;
    ``--detector auto`` is resolved by the size of ``run``'s train features, which must exist by then."""
    la = LAOOD.from_flags(args, gammas=tuple(args.gammas or get_recipe(arch).get("gammas", GAMMAS)),
                          backend="dask" if (args.dask_scheduler or args.dask_local) else None)
    if la.detector != "auto":
        return la.resolved(0)
    manifest = read_json(Layout.features(run, "train") / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"--detector auto needs the train features of {run} to know their size; "
                                f"run save_inter_outputs.py first")
    la = la.resolved(manifest["count"] - la.calibration_size)
    logging.getLogger("detectors").info(f"--detector {la.choice}")
    return la


def locate_run(args):
    """``(run directory, architecture, checkpoint sha256)`` of the checkpoint and data flags."""
    saved = read_checkpoint(args.checkpoint)
    arch = saved.arch or args.model
    if arch is None:
        raise ValueError(f"checkpoint {args.checkpoint} does not name its architecture; pass --model")
    if args.model and arch != args.model:
        raise ValueError(f"checkpoint {args.checkpoint} holds a {arch}, but --model {args.model} was asked for")
    sha = sha256_file(args.checkpoint)
    name = run_name(arch, getattr(args, "taps", None) or saved.taps)
    return layout(args).run(args.ind, name, sha, data_config(args).tag, getattr(args, "precision", "fp32")), arch, sha
