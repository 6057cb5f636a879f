"""Stage 2: per-layer features of the in-distribution splits and every generated OOD set.

    python save_inter_outputs.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 --ind cifar10

Across N processes (each set split between them by batches; gloo on CPUs, NCCL on GPUs, one per process):

    torchrun --nproc_per_node N save_inter_outputs.py --checkpoint ... --model vgg16 --ind cifar10
"""
import argparse
import logging
import os
import time

import torch

from utils.cli import add_data_args, add_model_args, add_producer_args, data_config, layout, positive_int
from utils.runtime import resolve_device, run_script
from utils.features import chosen_producers, open_backbone, save_features, save_nac_stages
from utils.generate import generated_sets
from utils.paths import IND_SPLITS

log = logging.getLogger("save_inter_outputs")


def join_process_group(device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on CUDA, gloo otherwise); each process takes its own GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: save per-layer features", add_help=True)
    add_data_args(parser)
    add_model_args(parser)
    parser.add_argument("--sets", nargs="+", default=None,
                        help="sets to process (default: train, test and every generated OOD set)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_producer_args(parser)
    parser.add_argument("--force", action="store_true", help="recompute sets that are already complete")
    return parser


def main(args):
    device = resolve_device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # started by torchrun
        device = join_process_group(device)
        if torch.distributed.get_rank() != 0:   # one voice in the log
            logging.getLogger().setLevel(logging.WARNING)
    cfg, lay = data_config(args), layout(args)
    model, sha = open_backbone(args.checkpoint, cfg.num_classes(), args.model, device, args.normalization, args.taps,
                               args.head)
    names = args.sets or list(IND_SPLITS) + generated_sets(lay, args.ind, cfg.tag)
    start = time.time()
    run = save_features(model, sha, lay, args.ind, cfg.tag, names, device, args.batch_size, args.force, args.seed,
                        args.precision, chosen_producers(args))
    if args.nac_stages:
        save_nac_stages(model, sha, run, lay, args.ind, cfg.tag, names, device,
                        None if args.nac_stages == "default" else args.nac_stages)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    log.info(f"features of {len(names)} sets from {model.arch} ({sha[:8]}) on {device} in {time.time() - start:.0f}s "
          f"-> {run / 'features'}")
    return run


if __name__ == "__main__":
    run_script(main, get_args_parser)
