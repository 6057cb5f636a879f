"""Train a backbone on CIFAR-10 / CIFAR-100 (the original's schedules by default, or a short one-cycle run).

    python train_backbone_model.py --model resnet20 --ind cifar10 --source-root ../shared/data --schedule onecycle --epochs 15
    torchrun --nproc_per_node 2 train_backbone_model.py --model vgg16 ...        # data-parallel
    python train_backbone_model.py --model resnet34 --average A.pt B.pt --out DIR    # weight average (SWA)
"""
import argparse
import logging
from dataclasses import replace
from pathlib import Path

import torch

from models import create_model, get_recipe, list_models, load_model
from models.generic import safe_name
from utils.cli import (add_data_args, add_normalization_arg, add_train_args, data_config, layout, model_arg,
                       train_config)
from utils.runtime import resolve_device, run_script
from utils.engine import (average_state_dicts, distributed, evaluate, fit, load_splits, load_test,
                          recompute_batchnorm)
from utils.io import save_checkpoint
from utils.paths import FINAL

log = logging.getLogger("train_backbone_model")


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: train a backbone", add_help=True)
    add_data_args(parser)
    parser.add_argument("--model", required=True, type=model_arg, metavar="NAME",
                        help=f"architecture to train: {', '.join(list_models())}, or torchvision:NAME, timm:NAME, "
                             "module.path:factory")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, mps")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: checkpoints/<ind>-<model>-<schedule>)")
    add_normalization_arg(parser)
    add_train_args(parser)
    parser.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT",
                        help="start from this checkpoint's weights (a fresh optimizer and schedule: a second cycle, "
                             "or fine-tuning); --resume continues an interrupted run instead")
    parser.add_argument("--eval-only", type=Path, default=None, metavar="CHECKPOINT",
                        help="only report the float32 test accuracy of this checkpoint")
    parser.add_argument("--average", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                        help="instead of training, average these checkpoints' weights (stochastic weight averaging: "
                             "e.g. the ends of successive --init cycles), recompute BatchNorm statistics over one "
                             "augmented pass through the training images, and write --out/final.pt")
    return parser


def main(args):
    rank, world = distributed()
    device = resolve_device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    if args.eval_only:
        test = load_test(data_config(args, oods=[]), layout(args))
        model = load_model(args.eval_only, args.model, data_config(args).num_classes(), args.normalization).to(device)
        result = evaluate(model, *test, device, amp="off")
        norm = model.normalization
        print(f"{args.model} {args.eval_only}: {result['test_acc']:.2f}% on {len(test[0])} {args.ind} test images "
              f"(float32, {norm.name} normalisation: mean {norm.mean}, std {norm.std})")
        return result
    if args.average:
        return average(args, device)
    cfg = train_config(args, get_recipe(args.model))
    out = args.out or layout(args).training(args.ind, safe_name(args.model), cfg.schedule)
    train, test = load_splits(data_config(args, oods=[]), layout(args))
    if args.init is not None:
        model = load_model(args.init, args.model, data_config(args).num_classes(), args.normalization)
        cfg = replace(cfg, init=str(args.init))
    else:
        model = create_model(args.model, data_config(args).num_classes())
        if args.normalization is not None:
            model.normalization = args.normalization
    if rank == 0:
        log.info(f"{args.model} on {args.ind}: {len(train[0])} train / {len(test[0])} test images, {device}, "
              f"world {world}, {cfg}")
    rows = fit(model, train, test, cfg, out, device, resume=args.resume)
    if rank == 0 and rows:
        log.info(f"final test accuracy {rows[-1]['test_acc']:.2f}% -> {out / FINAL}")
    return rows


def average(args, device):
    if args.out is None:
        raise SystemExit("--average needs --out DIR: where the averaged checkpoint (DIR/final.pt) goes")
    data = data_config(args, oods=[])
    train, test = load_splits(data, layout(args))
    models = [load_model(path, args.model, data.num_classes(), args.normalization) for path in args.average]
    model = models[0]
    model.load_state_dict(average_state_dicts([m.state_dict() for m in models]))
    layers = recompute_batchnorm(model, train[0], device, amp=args.amp, seed=args.seed)
    result = evaluate(model, *test, device, amp="off")
    save_checkpoint(model, args.out / FINAL, averaged_from=[str(p) for p in args.average],
                    batchnorm_images=len(train[0]), test_acc=result["test_acc"])
    print(f"{args.model}: the average of {len(models)} checkpoints, {layers} BatchNorm layers recomputed over "
          f"{len(train[0])} train images: {result['test_acc']:.2f}% on {len(test[0])} {args.ind} test images "
          f"(float32) -> {args.out / FINAL}")
    return result


if __name__ == "__main__":
    run_script(main, get_args_parser)
