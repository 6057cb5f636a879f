"""Stage 1: make the in-distribution and OOD evaluation images as 32x32 RGB uint8 arrays.

    python generate_datasets.py --ind cifar10 --source-root ../shared/data
"""
import argparse
import logging

from utils.cli import add_data_args, add_set_args, data_config, layout
from utils.runtime import run_script
from utils.sets import parse_extra
from utils.generate import generate

log = logging.getLogger("generate_datasets")


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: generate evaluation images", add_help=True)
    add_data_args(parser)
    add_set_args(parser)
    parser.add_argument("--force", action="store_true", help="remake sets that are already complete")
    return parser


def main(args):
    cfg = data_config(args, oods=args.ood, extra=parse_extra(args.extra_ood))
    written = generate(cfg, layout(args), force=args.force)
    log.info(f"{len(written)} sets ready under {layout(args).image_root(cfg.ind, cfg.tag)}")
    return written


if __name__ == "__main__":
    run_script(main, get_args_parser)
