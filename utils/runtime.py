"""What a stage starts at run time: its entry point, the device, a Dask cluster, the run directory of a checkpoint,
and the detector stage its flags ask for (utils/cli.py holds the flags themselves)."""
import contextlib
import logging
import sys
from pathlib import Path

import torch

from models import get_recipe, read_checkpoint
from models.generic import run_name

from .cli import data_config, layout
from .detectors import GAMMAS, LAOOD
from .io import read_json, sha256_file
from .paths import MANIFEST, Layout


# Loggers of this repository: its packages and its scripts (the stages log as ``utils.*``, scripts by their name).
OWN_LOGGERS = frozenset({"utils", "models", "detectors", "benchmarks", "__main__"}
                        | {p.stem for p in Path(__file__).resolve().parents[1].glob("*.py")})


def _own_or_warning(record: logging.LogRecord) -> bool:
    """Progress lines of this repository, and warnings of anyone: other libraries' INFO chatter (faiss's
    loader reports every optional CPU library it did not find) would read to a user as trouble."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] in OWN_LOGGERS


def run_script(main, get_args_parser) -> None:
    """A stage script's entry point: progress as log lines on stderr, and bad input ends with one clear
    line instead of a traceback. (Library callers configure ``logging`` as they like: the stages only log.)"""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_own_or_warning)
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device name (try auto, cpu, cuda, mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    return device


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


@contextlib.contextmanager
def dask_cluster(args):
    """Connects to ``--dask-scheduler`` or starts ``--dask-local N`` workers for the duration of a stage;
    does nothing without those flags. joblib's Dask backend then sends the layer fits to the workers."""
    if not (args.dask_scheduler or args.dask_local):
        yield None
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise RuntimeError("--dask-scheduler / --dask-local need Dask: pip install 'dask[distributed]'") from e
    if args.dask_scheduler:
        with Client(args.dask_scheduler, timeout="30s") as client:
            logging.getLogger("detectors").info(f"layer fits on the Dask cluster at {args.dask_scheduler} "
                                                f"({len(client.scheduler_info()['workers'])} workers)")
            yield client
    else:
        with LocalCluster(n_workers=args.dask_local, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            logging.getLogger("detectors").info(f"layer fits on a local Dask cluster of {args.dask_local} workers")
            yield client


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
