"""What every stage script starts with: its entry point (logging, one clear line for bad input) and the device.
The run directory of a checkpoint and the detectors the flags ask for are in utils/locate.py, a Dask cluster in
utils/cluster.py, the flags themselves in utils/cli.py."""
import logging
import sys
from pathlib import Path

import torch

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
