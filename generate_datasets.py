"""Stage 1: make the in-distribution and OOD evaluation images as 32x32 RGB uint8 arrays.

    python generate_datasets.py --ind cifar10 --source-root ../shared/data
"""
import argparse
import logging

from utils.cli import add_data_args, data_config, layout
from utils.runtime import run_script
from utils.data import OOD_SETS, parse_extra
from utils.generate import generate

log = logging.getLogger("generate_datasets")


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: generate evaluation images", add_help=True)
    add_data_args(parser)
    parser.add_argument("--ood", nargs="+", choices=OOD_SETS, default=None,
                        help="OOD sets to make (default: lsun tiny svhn dtd pure_color and the other CIFAR)")
    parser.add_argument("--extra-ood", action="append", default=[], metavar="NAME=PATH",
                        help="an extra OOD set from an image folder or zip archive; repeatable")
    parser.add_argument("--download", action="store_true",
                        help="fetch a set that no --source-root holds into the first one: CIFAR-10/100, SVHN and DTD "
                             "with torchvision, LSUN (resize) and Tiny ImageNet from their public archives")
    parser.add_argument("--force", action="store_true", help="remake sets that are already complete")
    return parser


def main(args):
    cfg = data_config(args, oods=args.ood, extra=parse_extra(args.extra_ood))
    written = generate(cfg, layout(args), force=args.force)
    log.info(f"{len(written)} sets ready under {layout(args).image_root(cfg.ind, cfg.tag)}")
    return written


if __name__ == "__main__":
    run_script(main, get_args_parser)
