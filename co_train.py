"""Co-train a backbone with its per-layer One-Class SVMs: loss = CE - lambda * D (see utils/cotrain.py).

    python co_train.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 --ind cifar10 \
        --source-root ../shared/data

Starts from the given checkpoint (the original built a fresh model and ignored --pretrained) and uses
the detectors that train_ood_detectors.py fitted on that checkpoint's features.
"""
import argparse
import logging
from pathlib import Path

from models import get_recipe, load_model
from utils.cli import add_data_args, add_model_args, add_train_args, data_config, layout, train_config
from utils.locate import locate_run
from utils.runtime import resolve_device, run_script
from utils.cotrain import CoTrainLoss, mean_decision
from utils.engine import fit, load_splits
from utils.detectors import LAOOD
from utils.fitting import load_detectors
from utils.paths import FINAL, Layout

log = logging.getLogger("co_train")


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: co-train backbone and detectors", add_help=True)
    add_data_args(parser)
    add_model_args(parser)
    add_train_args(parser)
    parser.add_argument("--detectors", type=Path, default=None,
                        help="directory of fitted exact One-Class SVM detectors (default: those of --checkpoint's run)")
    parser.add_argument("--calibration-size", type=int, default=0,
                        help="use the detectors fitted with this --calibration-size (default 0: those fitted on every "
                             "train image); --detectors names a directory instead")
    parser.add_argument("--lam", type=float, default=0.001, help="weight lambda of the detector term")
    parser.add_argument("--layers-per-batch", type=int, default=None,
                        help="layers drawn at random per batch (default: all up to 13 layers, else 10)")
    parser.add_argument("--stats-images", type=int, default=None,
                        help="train images used to recompute the feature mean/std each epoch (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: checkpoints/<ind>-<model>-cotrain)")
    parser.set_defaults(schedule="constant", epochs=5, lr=0.001, weight_decay=1e-4)
    return parser


def main(args):
    device = resolve_device(args.device)
    run, arch, sha = locate_run(args)
    det_dir = args.detectors or Layout.detectors(run, LAOOD(seed=args.seed, calibration_size=args.calibration_size).tag)
    detectors = load_detectors(det_dir, expect_sha=sha).detectors_
    model = load_model(args.checkpoint, arch, data_config(args).num_classes(), args.normalization, args.taps, args.head).to(device)
    per_batch = args.layers_per_batch or (model.num_taps if model.num_taps <= 13 else 10)
    loss = CoTrainLoss(model, detectors, lam=args.lam, layers_per_batch=per_batch).to(device)
    cfg = train_config(args, get_recipe(arch))
    train, test = load_splits(data_config(args, oods=[]), layout(args))
    stats = train[0] if args.stats_images is None else train[0][:args.stats_images]
    out = args.out or layout(args).training(args.ind, arch, "cotrain")

    def refresh(epoch):
        loss.refresh_statistics(stats, device)
        probe = stats[:2000]
        log.info(f"epoch {epoch + 1}: feature statistics from {len(stats)} train images; mean decision value on "
              f"{len(probe)} of them {mean_decision(loss, probe, device):.4f}")

    rows = fit(model, train, test, cfg, out, device, loss_fn=loss, resume=args.resume, on_epoch_start=refresh,
               keep_epochs=True)
    log.info(f"co-trained {arch} ({sha[:8]}): test accuracy {rows[-1]['test_acc']:.2f}% -> {out / FINAL}")
    return rows


if __name__ == "__main__":
    run_script(main, get_args_parser)
