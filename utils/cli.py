"""Flags shared by every stage script, so the same thing has the same name everywhere (what they start at run
time, devices, Dask, the run directory, lives in utils/runtime.py)."""
import argparse
from pathlib import Path

from models import list_models, parse_normalization

from .bootstrap import RESAMPLES
from .sets import IND_SETS, NEAR_OODS, OOD_SETS, check_name
from .detectors import LAOOD
from .detectors.ensemble import FLAGS
from .detection import DetectConfig
from .engine import TrainConfig
from .generate import MAX_OOD, DataConfig
from .methods import list_methods
from .producers import get_producer, list_producers
from .tuning import VALIDATION_OOD, VALIDATION_SIZE
from .paths import Layout


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text}")
    return value


class IndAction(argparse.Action):
    """``--ind cifar10`` or ``--ind NAME=PATH`` (a labelled image folder or zip): sets ``ind`` and ``ind_path``."""

    def __call__(self, parser, namespace, value, option_string=None):
        name, sep, path = value.partition("=")
        if not sep:
            if name not in IND_SETS:
                parser.error(f"--ind {value!r}: choose one of {', '.join(IND_SETS)}, or NAME=PATH for a labelled "
                             f"image folder or zip archive")
            namespace.ind, namespace.ind_path = name, None
            return
        try:
            check_name(name, "--ind")
        except ValueError as e:
            parser.error(str(e))
        if name in OOD_SETS or not path:
            parser.error(f"--ind {value!r}: NAME must not be a built-in set's name ({', '.join(OOD_SETS)}) and "
                         f"PATH must be given")
        namespace.ind, namespace.ind_path = name, Path(path)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--ind", default="cifar10", action=IndAction, metavar="cifar10|cifar100|NAME=PATH",
                   help="in-distribution set: cifar10, cifar100, or NAME=PATH, a labelled image folder or zip archive "
                        "(train/ and test/ of class folders, or class folders split by --test-fraction)")
    g.add_argument("--image-size", type=positive_int, default=32,
                   help="side of the square images every set is made at (32: CIFAR's, resized straight with "
                        "LANCZOS as the original; others: shorter side resized, centre crop, as torchvision's "
                        "classification presets)")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="for an --ind folder without train/ and test/: the seeded, class-stratified test share")
    g.add_argument("--source-root", type=Path, action="append", default=None,
                   help="directory holding raw datasets (torchvision layouts, image folders or zip archives); "
                        "repeatable, searched in order (default: data/raw)")
    g.add_argument("--data-root", type=Path, default=Layout.data_root,
                   help="where generated image arrays are written")
    g.add_argument("--max-train", type=positive_int, default=None,
                   help="use a seeded, class-stratified subset of this many training images (default: all)")
    g.add_argument("--max-test", type=positive_int, default=None,
                   help="use a seeded, class-stratified subset of this many test images (default: all)")
    g.add_argument("--max-ood", type=positive_int, default=MAX_OOD, help="cap on images per OOD set (seeded subset)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (subsets, splits, colours)")


def add_producer_args(parser: argparse.ArgumentParser) -> None:
    """One flag (and its options) per stage-2 producer (utils/producers), then NAC-UE's stages as its authors
    compute them."""
    for name in list_producers():
        get_producer(name).add_args(parser)
    add_nac_stages_arg(parser)


def nac_stages_arg(text: str):
    return [m.strip() for m in text.split(",") if m.strip()] if text != "default" else "default"


def add_nac_stages_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nac-stages", nargs="?", const="default", default=None, type=nac_stages_arg,
                        metavar="MODULES",
                        help="also store NAC-UE's values as its authors compute them (utils/nac_authors.py) in "
                             "<run>/nac_stages: for a ResNet every stage output but the last (default), or the "
                             "comma-separated modules named; a backward pass over every evaluated image and 1,000 "
                             "train images")


def add_set_args(parser: argparse.ArgumentParser) -> None:
    """Which sets stage 1 makes, and whether it may fetch them (generate_datasets.py and run_pipeline.py)."""
    parser.add_argument("--ood", nargs="+", choices=OOD_SETS, default=None,
                        help="OOD sets to make (default: lsun tiny svhn dtd pure_color and the other CIFAR; a set no "
                             "source holds is skipped with a line saying what was looked for)")
    parser.add_argument("--extra-ood", action="append", default=[], metavar="NAME=PATH",
                        help="an extra OOD set from an image folder or zip archive; repeatable")
    parser.add_argument("--download", action="store_true",
                        help="fetch a set that no --source-root holds into the first one: CIFAR-10/100, SVHN and DTD "
                             "with torchvision, LSUN (resize) and Tiny ImageNet from their public archives")


def model_arg(text: str) -> str:
    if ":" not in text and text not in list_models():
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose one of {', '.join(list_models())}, "
                                         f"or torchvision:NAME, timm:NAME, module.path:factory")
    return text


def normalization_arg(text: str):
    try:
        return parse_normalization(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_normalization_arg(parser) -> None:
    parser.add_argument("--normalization", type=normalization_arg, default=None, metavar="PRESET|m,m,m,s,s,s",
                        help="input normalisation of a checkpoint that does not record it: imagenet, cifar, or "
                             "six numbers (means then stds); default: what the checkpoint says, else the model "
                             "recipe's (imagenet)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", type=model_arg, default=None, metavar="NAME",
                   help=f"architecture: {', '.join(list_models())}, or torchvision:NAME, timm:NAME, "
                        "module.path:factory; needed only for plain state-dict checkpoints, checked otherwise")
    g.add_argument("--taps", default=None, metavar="PATTERNS|convs|blocks",
                   help="for torchvision:/timm:/module: models, the tapped modules: comma-separated name patterns "
                        "(e.g. 'layer*.*.conv2,fc'), or every convolution (convs) or block (blocks, the default)")
    g.add_argument("--head", default=None, metavar="NAME",
                   help="for torchvision:/timm:/module: models, the classifier module (default: the last nn.Linear)")
    g.add_argument("--checkpoint", type=Path, required=True, help="backbone checkpoint file")
    add_normalization_arg(g)
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="forward pass of feature extraction: fp32, or bfloat16 autocast (faster on CPUs and GPUs "
                        "that have it; its runs live apart, in <model>-<sha>-bf16)")
    g.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    g.add_argument("--runs-root", type=Path, default=Layout.runs_root, help="root of features, detectors, results")


def data_config(args, oods=None, extra=None) -> DataConfig:
    return DataConfig(ind=args.ind, oods=oods, extra=extra, roots=args.source_root or [Path("data/raw")],
                      max_train=args.max_train, max_test=args.max_test, max_ood=args.max_ood, seed=args.seed,
                      download=getattr(args, "download", False), ind_path=getattr(args, "ind_path", None),
                      image_size=args.image_size, test_fraction=args.test_fraction)


def layout(args) -> Layout:
    return Layout(data_root=args.data_root, runs_root=getattr(args, "runs_root", Layout.runs_root))


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """The detector stage's flags: one per setting of ``LAOOD.get_params()`` (generated from ``detectors.FLAGS``),
    then how the stages run (Dask, the scoring device, early exit)."""
    g = parser.add_argument_group("detectors")
    defaults = LAOOD().get_params()
    for name, flag in FLAGS.items():
        option = "--" + name.replace("_", "-")
        default = flag.default if flag.default is not None else (None if flag.nargs else defaults[name])
        if flag.type is bool:
            g.add_argument(option, *flag.aliases, dest=name, action=argparse.BooleanOptionalAction, default=default,
                           help=flag.help)
            continue
        g.add_argument(option, *flag.aliases, dest=name, type=flag.type, nargs=flag.nargs, choices=flag.choices,
                       default=default, help=flag.help)
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="fit and score the layers on a Dask cluster (e.g. tcp://10.0.0.5:8786) through joblib's "
                        "Dask backend; needs dask[distributed]")
    g.add_argument("--dask-local", type=positive_int, default=None, metavar="N",
                   help="fit and score the layers on a local Dask cluster of N worker processes")
    g.add_argument("--score-device", default=None, metavar="DEVICE",
                   help="score the One-Class SVM layers with torch on this device (cpu, cuda, ...), in batches, "
                        "instead of the default float64 NumPy scoring (equal to scikit-learn's to 1e-9)")
    g.add_argument("--exit-threshold", type=float, default=0.99, help="early exit: calibrated OOD probability to exceed")
    g.add_argument("--exit-k", type=int, default=2, help="early exit: layers at which it must be exceeded")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Training flags; unset ones take the model's recipe (the original code's schedule)."""
    g = parser.add_argument_group("training (defaults: the model's original schedule)")
    g.add_argument("--epochs", type=positive_int, default=None, help="epochs")
    g.add_argument("--batch-size", type=positive_int, default=None, help="batch size per process")
    g.add_argument("--lr", type=float, default=None, help="(peak) learning rate")
    g.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--schedule", choices=("step", "onecycle", "constant"), default="step",
                   help="step: the original's step decay; onecycle: a short schedule (Nesterov, 30 epochs "
                        "unless --epochs says otherwise); constant: no decay")
    g.add_argument("--milestones", type=int, nargs="+", default=None, help="epochs where a step schedule decays")
    g.add_argument("--step-size", type=int, default=None, help="decay every this many epochs (instead of milestones)")
    g.add_argument("--lr-gamma", type=float, default=None, help="decay factor of a step schedule")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision: auto = bfloat16 where the device computes it natively (GPUs that support it, "
                        "CPUs with AVX512-BF16 or AMX), float16 with loss scaling on other GPUs, float32 on other CPUs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--keep-best", action="store_true",
                   help="also keep the checkpoint with the best test accuracy, as the original did "
                        "(this chooses by looking at the test set)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its state.pt")
    g.add_argument("--max-batches", type=positive_int, default=None, help="cap batches per epoch (quick tries)")


def train_config(args, recipe: dict) -> TrainConfig:
    onecycle = args.schedule == "onecycle"
    pick = lambda flag, key, default=None: flag if flag is not None else recipe.get(key, default)  # noqa: E731
    step_size = args.step_size if args.step_size is not None else (None if args.milestones else recipe.get("step_size"))
    return TrainConfig(
        epochs=args.epochs or (30 if onecycle else recipe["epochs"]), batch_size=pick(args.batch_size, "batch_size"),
        lr=pick(args.lr, "lr"), weight_decay=pick(args.weight_decay, "weight_decay"), momentum=args.momentum,
        schedule=args.schedule, milestones=pick(args.milestones, "milestones"), step_size=step_size,
        gamma=pick(args.lr_gamma, "gamma", 0.1), nesterov=args.nesterov or onecycle, amp=args.amp, seed=args.seed,
        keep_best=args.keep_best, compile=args.compile, max_batches=args.max_batches)


def results_dir(args, run: Path, tag: str) -> Path:
    """Where detection with these flags writes its tables (one validation split's, or their spread over several)."""
    splits = args.tune_seeds or []
    if len(splits) > 1:
        return Layout.split_spread(run, tag, splits)
    split = splits[0] if splits and splits[0] != args.seed else None
    return Layout.results(run, tag, tuned=args.tune or bool(splits), split=split)


def detect_config(args, **record) -> DetectConfig:
    """The detection settings of the method and detector flags."""
    splits = args.tune_seeds or []
    return DetectConfig(seed=args.seed, methods=args.methods, tune=args.tune or bool(splits),
                        tune_seed=splits[0] if len(splits) == 1 else None, resamples=args.resamples,
                        validation_ood=args.tune_ood, validation_size=args.tune_size, near=args.near,
                        exit_threshold=args.exit_threshold, exit_k=args.exit_k, n_jobs=args.n_jobs,
                        backend="dask" if (args.dask_scheduler or args.dask_local) else None,
                        score_device=args.score_device, record=record)


def add_method_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", "--baselines", nargs="*", choices=list_methods(), default=None,
                        metavar="METHOD",
                        help="scoring methods in the tables (default: every registered one whose inputs exist: "
                             f"{', '.join(list_methods())}); LA-OOD's per-layer tables are always written")
    parser.add_argument("--tune", action="store_true",
                        help=f"hold {VALIDATION_SIZE:,} test images (as many of each class) and {VALIDATION_SIZE:,} "
                             f"{VALIDATION_OOD} images out for validation, choose every method's "
                             "hyperparameters on them from its grid, and write the tables at the defaults and tuned, "
                             "both on the remaining images, to results/<detectors>-tuned")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="--tune with the validation split drawn with this seed (default: --seed); several seeds "
                             "repeat the tuned tables over each split and add their mean and standard deviation "
                             "(results/<detectors>-tuned-splits<A-B-C>); implies --tune")
    parser.add_argument("--resamples", type=non_negative_int, default=RESAMPLES, metavar="N",
                        help=f"paired bootstrap draws behind each table's margins and their 95%% intervals (default "
                             f"{RESAMPLES:,}; 0: no intervals)")
    parser.add_argument("--tune-ood", default=VALIDATION_OOD, metavar="SET",
                        help=f"--tune: the OOD set whose images are held out for validation (default {VALIDATION_OOD}, "
                             "as OpenOOD v1.5); it is evaluated on its other images")
    parser.add_argument("--tune-size", type=positive_int, default=VALIDATION_SIZE, metavar="N",
                        help=f"--tune: validation images of each side (default {VALIDATION_SIZE:,})")
    parser.add_argument("--near", nargs="+", default=list(NEAR_OODS), metavar="SET",
                        help="OOD sets averaged as near-OOD in the overview (others count as far); default: "
                             f"{' '.join(NEAR_OODS)} (an --extra-ood set named here counts as near too)")
