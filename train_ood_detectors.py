"""Stage 3: fit one one-class detector per tapped layer on in-distribution train features only.

    python train_ood_detectors.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 --ind cifar10
"""
import argparse

from utils.cli import add_data_args, add_detector_args, add_model_args
from utils.cluster import dask_cluster
from utils.locate import la_ood, locate_run
from utils.runtime import run_script
from utils.fitting import train_detectors


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: train per-layer OOD detectors", add_help=True)
    add_data_args(parser)
    add_model_args(parser)
    add_detector_args(parser)
    parser.add_argument("--force", action="store_true", help="refit even if matching detectors exist")
    return parser


def main(args):
    run, arch, _ = locate_run(args)
    la = la_ood(args, arch, run)
    with dask_cluster(args):
        return train_detectors(run, la, force=args.force)


if __name__ == "__main__":
    run_script(main, get_args_parser)
