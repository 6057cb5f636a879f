"""The whole LA-OOD run in one command: generate images, save features, fit detectors, detect.

    python run_pipeline.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 \
        --ind cifar10 --source-root ../shared/data

Each stage reuses only outputs made from the same checkpoint (by content hash) and settings.
"""
import argparse
import time

from utils.cli import (add_data_args, add_detector_args, add_method_args, add_model_args, add_set_args, data_config,
                       add_producer_args, detect_config, layout, positive_int, results_dir)
from utils.cluster import dask_cluster
from utils.locate import la_ood
from utils.runtime import resolve_device, run_script
from utils.sets import parse_extra
from utils.detection import detect, repeat_over_splits
from utils.features import chosen_producers, open_backbone, save_features, save_nac_stages
from utils.fitting import train_detectors
from utils.generate import generate
from utils.paths import IND_SPLITS, SPREAD_MD, SUMMARY_MD

QUICK = {"max_train": 10000, "max_test": 2000, "max_ood": 2000}


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: the whole pipeline", add_help=True)
    add_data_args(parser)
    add_model_args(parser)
    add_detector_args(parser)
    add_set_args(parser)
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_producer_args(parser)
    add_method_args(parser)
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: seeded subsets of 10,000 train, 2,000 test and 2,000 images per OOD set "
                             "(explicit --max-* flags win)")
    return parser


def main(args):
    if args.quick:
        defaults = get_args_parser().parse_args(["--checkpoint", "x"])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    # Every input is checked before anything is written: names, the checkpoint and its fit to the model.
    cfg, lay = data_config(args, oods=args.ood, extra=parse_extra(args.extra_ood)), layout(args)
    device = resolve_device(args.device)
    model, sha = open_backbone(args.checkpoint, cfg.num_classes(), args.model, device, args.normalization, args.taps,
                               args.head)
    timings, t = {}, time.time()
    sets = generate(cfg, lay)
    timings["generate_s"], t = time.time() - t, time.time()
    run = save_features(model, sha, lay, args.ind, cfg.tag, list(sets), device, args.batch_size, seed=args.seed,
                        precision=args.precision, producers=chosen_producers(args))
    if args.nac_stages:
        save_nac_stages(model, sha, run, lay, args.ind, cfg.tag, list(sets), device,
                        None if args.nac_stages == "default" else args.nac_stages)
    timings["features_s"], t = time.time() - t, time.time()
    la = la_ood(args, model.arch, run)
    oods = [name for name in sets if name not in IND_SPLITS]
    with dask_cluster(args):
        det_dir = train_detectors(run, la)
        timings["detectors_s"], t = time.time() - t, time.time()
        config = detect_config(args, stage_seconds=timings)
        if args.tune_seeds and len(args.tune_seeds) > 1:
            summary = repeat_over_splits(run, det_dir, oods, args.tune_seeds, config)
        else:
            summary = detect(run, det_dir, oods, config)
    timings["detect_s"] = time.time() - t
    print(f"\n{model.arch} on {args.ind} ({sha[:8]}), {cfg.tag}, detector {la.detector}\n")
    out = results_dir(args, run, la.tag)
    print((out / (SPREAD_MD if args.tune_seeds and len(args.tune_seeds) > 1 else SUMMARY_MD)).read_text())
    print("stage seconds: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in timings.items()) + f"; results in {out}")
    return summary


if __name__ == "__main__":
    run_script(main, get_args_parser)
