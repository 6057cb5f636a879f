"""What makes a backbone's forward pass faster on this machine: precision, memory format, batch size,
threads and ``torch.compile``, each timed beside plain float32 in one run.

    python -m benchmarks.inference_options --models densenet100 --images 1024

Prints images per second of the bare forward pass for every option and its ratio to float32
(NCHW, batch 256, all threads), best of ``--repeats`` alternating rounds to damp machine noise.
The options that change numbers (bfloat16) are also compared by how far their pooled features
move: the median relative error of every tap's pooled output against float32.
"""
import time
from pathlib import Path

import torch

from models import create_model, load_model
from benchmarks.feature_speed import test_images, timing_parser
from utils.inputs import to_input
from utils.extraction import inference_autocast

# name -> (precision, channels_last, batch size or None for --batch-size, threads or None for all, compile)
OPTIONS = {
    "float32 (baseline)": ("fp32", False, None, None, False),
    "float32, channels-last": ("fp32", True, None, None, False),
    "float32, batch 64": ("fp32", False, 64, None, False),
    "float32, batch 512": ("fp32", False, 512, None, False),
    "float32, 1 thread": ("fp32", False, None, 1, False),
    "float32, torch.compile": ("fp32", False, None, None, True),
    "bfloat16 autocast": ("bf16", False, None, None, False),
    "bfloat16 autocast, channels-last": ("bf16", True, None, None, False),
}


@torch.inference_mode()
def forward_all(model, images, batch_size, device, precision, channels_last, pooled=False):
    autocast = inference_autocast(device, precision)
    feats = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            if pooled:
                feats.append(torch.cat(model.forward_intermediates(x).features, 1).float())
            else:
                model(x)
    return torch.cat(feats) if pooled else None


def get_args_parser():
    p = timing_parser(__doc__, 1024, 2, ["densenet100"])
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), metavar="OPTION",
                   help=f"options to time (default: all of {', '.join(OPTIONS)})")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="trained weights for the (single) model, e.g. the shared DenseNet; default: random init")
    return p


def main(args):
    device = torch.device(args.device)
    images = test_images(args)
    threads = torch.get_num_threads()
    print(f"{len(images)} CIFAR-10 test images, {device}, {threads} threads, torch {torch.__version__}\n")
    for name in args.models:
        torch.manual_seed(0)
        base = (load_model(args.checkpoint, name) if args.checkpoint else create_model(name)).to(device).eval()
        compiled = None
        best = {o: float("inf") for o in args.options}
        for _ in range(args.repeats):
            for option in args.options:
                precision, cl, bs, nthreads, comp = OPTIONS[option]
                model = base.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                if comp:
                    if compiled is None:
                        compiled = torch.compile(base)
                    model = compiled
                torch.set_num_threads(nthreads or threads)
                forward_all(model, images[:bs or args.batch_size], bs or args.batch_size, device, precision, cl)  # warm
                t = time.perf_counter()
                forward_all(model, images, bs or args.batch_size, device, precision, cl)
                best[option] = min(best[option], time.perf_counter() - t)
                torch.set_num_threads(threads)
        base = base.to(memory_format=torch.contiguous_format)
        ref = forward_all(base, images[:256], 256, device, "fp32", False, pooled=True)
        low = forward_all(base, images[:256], 256, device, "bf16", False, pooled=True)
        rel = ((low - ref).abs() / ref.abs().clamp_min(1e-3)).median().item()
        print(f"### {name}\n\n| option | img/s | vs float32 |\n|---|---|---|")
        baseline = best.get("float32 (baseline)")
        for option in args.options:
            speed = len(images) / best[option]
            ratio = f"{baseline / best[option]:.2f}x" if baseline else "-"
            print(f"| {option} | {speed:.1f} | {ratio} |")
        print(f"\nbfloat16 autocast moves the pooled tap outputs by a median relative {rel:.2e} "
              f"({'weights of ' + args.checkpoint.name if args.checkpoint else 'random init weights'}; the pipeline's AUROCs "
              f"measure the effect on OOD detection)\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
