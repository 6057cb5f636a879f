"""Stage 4: score the test split and every OOD set with every scoring method, and write the tables.

    python detect_oods.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 --ind cifar10
"""
import argparse

from utils.cli import (add_data_args, add_detector_args, add_method_args, add_model_args, detect_config, layout,
                       results_dir)
from utils.cluster import dask_cluster
from utils.locate import la_ood, locate_run
from utils.runtime import run_script
from utils.detection import detect, repeat_over_seeds, repeat_over_splits
from utils.generate import generated_sets
from utils.io import format_table
from utils.paths import MANIFEST, SPREAD_MD, SUMMARY_MD, Layout


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: detect OOD images", add_help=True)
    add_data_args(parser)
    add_model_args(parser)
    add_detector_args(parser)
    parser.add_argument("--ood", nargs="+", default=None,
                        help="OOD sets to evaluate (default: every set with saved features)")
    add_method_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="repeat the detector stage and detection for each seed (fitting detectors that are "
                             "missing) and report the mean and standard deviation of every metric")
    return parser


def main(args):
    run, arch, _ = locate_run(args)
    names = args.ood or [n for n in generated_sets(layout(args), args.ind, run.name)
                         if (Layout.features(run, n) / MANIFEST).exists()]
    config = detect_config(args)
    if args.seeds:
        def make_laood(seed):
            return la_ood(argparse.Namespace(**{**vars(args), "seed": seed}), arch, run)
        with dask_cluster(args):
            rows = repeat_over_seeds(run, make_laood, args.seeds, names, config)
        print(format_table(rows))
        return rows
    la = la_ood(args, arch, run)
    out = results_dir(args, run, la.tag)
    with dask_cluster(args):
        if args.tune_seeds and len(args.tune_seeds) > 1:
            rows = repeat_over_splits(run, Layout.detectors(run, la.tag), names, args.tune_seeds, config)
            print((out / SPREAD_MD).read_text())
            return rows
        summary = detect(run, Layout.detectors(run, la.tag), names, config)
    print((out / SUMMARY_MD).read_text())
    return summary


if __name__ == "__main__":
    run_script(main, get_args_parser)
