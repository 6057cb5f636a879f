"""Stage 4: score the test split and every OOD set, and write the per-layer and summary tables.

    python detect_oods.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 --ind cifar10
"""
import argparse

from utils.cli import (add_baseline_args, add_data_args, add_detector_args, add_model_args, la_ood, layout,
                       locate_run, run_script)
from utils.generate import generated_sets
from utils.io import format_table
from utils.paths import Layout
from utils.pipeline import detect, repeat_over_seeds


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: detect OOD images", add_help=True)
    add_data_args(parser)
    add_model_args(parser)
    add_detector_args(parser)
    parser.add_argument("--ood", nargs="+", default=None,
                        help="OOD sets to evaluate (default: every set with saved features)")
    add_baseline_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="repeat the detector stage and detection for each seed (fitting detectors that are "
                             "missing) and report the mean and standard deviation of every metric")
    return parser


def main(args):
    run, arch, _ = locate_run(args)
    names = args.ood or [n for n in generated_sets(layout(args), args.ind, run.name)
                         if (Layout.features(run, n) / "manifest.json").exists()]
    kwargs = dict(n_jobs=args.jobs, baselines=args.baselines, exit_threshold=args.exit_threshold,
                  exit_k=args.exit_k)
    if args.seeds:
        def make_laood(seed):
            return la_ood(argparse.Namespace(**{**vars(args), "seed": seed}), arch)
        rows = repeat_over_seeds(run, make_laood, args.seeds, names, **kwargs)
        print(format_table(rows))
        return rows
    summary = detect(run, Layout.detectors(run, la_ood(args, arch).tag), names, seed=args.seed, **kwargs)
    print(format_table(summary))
    return summary


if __name__ == "__main__":
    run_script(main, get_args_parser)
