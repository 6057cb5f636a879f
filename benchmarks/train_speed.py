"""Training throughput of the engine's options side by side, and a plain loop in the original code's style.

    python -m benchmarks.train_speed --model resnet34 --batches 8
    python -m benchmarks.train_speed --model vgg16 --options plain fp32 bf16-cl-fastconv

Every option runs the same SGD step of ``utils.engine.train_one_epoch`` (batched tensor augmentation) on a
fresh model from the same seed, for ``--warmup`` untimed and ``--batches`` timed steps, in one process, one
after the other; training images per second and the ratio to the first option are printed as a table:

- ``plain``: the original code's loop: float32, NCHW, torchvision transforms on one PIL image at a time in a
  DataLoader;
- ``fp32``, ``fp32-cl``: float32, NCHW or channels-last;
- ``bf16``, ``bf16-cl``: bfloat16 autocast, NCHW or channels-last;
- ``bf16-cl-fastconv``: plus the small-map weight gradient of ``utils/fastconv.py``;
- ``bf16-cl-compile``: plus ``torch.compile`` (the first steps compile; they are not timed).

Whether the CPU has native bfloat16 (AVX512-BF16 or AMX) is printed: without it, bfloat16 is emulated and slow.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from models import PRESETS, create_model
from utils.data import find_source, load_subset
from utils.engine import cpu_has_native_bf16, cross_entropy, train_one_epoch
from utils.fastconv import use_unfold_weight_grad

OPTIONS = ("plain", "fp32", "fp32-cl", "bf16", "bf16-cl", "bf16-cl-fastconv", "bf16-cl-compile")


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_loop(model, images, labels, batch_size, batches, warmup, workers):
    import torchvision.transforms as T
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(PRESETS["imagenet"].mean, PRESETS["imagenet"].std)])
    loader = torch.utils.data.DataLoader(PILDataset(images, labels, tf), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    it = iter(loader)
    for b in range(warmup + batches):
        if b == warmup:
            start = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batches * batch_size / (time.perf_counter() - start)


def engine_loop(option, model, images, labels, batch_size, batches, warmup):
    """Images/s of the engine's step with ``option``'s precision, layout and kernels."""
    amp = "bf16" if option.startswith("bf16") else "off"
    layout = torch.channels_last if "-cl" in option else torch.contiguous_format
    model = model.to(memory_format=layout)
    if option.endswith("fastconv"):
        use_unfold_weight_grad(model)
    net = torch.compile(model) if option.endswith("compile") else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    kw = dict(amp=amp, progress=False, memory_format=layout)
    train_one_epoch(net, x, y, opt, cross_entropy, torch.device("cpu"), batch_size, 0, max_batches=warmup, **kw)
    return train_one_epoch(net, x, y, opt, cross_entropy, torch.device("cpu"), batch_size, 1,
                           max_batches=batches, **kw)["images_per_s"]


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="where the cifar10 train images are found")
    p.add_argument("--model", default="resnet34", help="model to train")
    p.add_argument("--batch-size", type=int, default=128, help="batch size")
    p.add_argument("--batches", type=int, default=8, help="timed steps per option")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the plain loop (the original's default)")
    p.add_argument("--options", nargs="+", choices=OPTIONS, default=list(OPTIONS[1:]), help="what to time, in order")
    return p


def main(args):
    source, missing = find_source("cifar10", "train", [args.source_root])
    if source is None:
        sys.exit(missing)
    n = args.batch_size * (args.batches + args.warmup + 2)
    images, labels = load_subset(source, n, seed=0, progress=False)
    rates = {}
    for option in args.options:
        torch.manual_seed(0)
        model = create_model(args.model)
        if option == "plain":
            rates[option] = plain_loop(model, images, labels, args.batch_size, args.batches, args.warmup, args.workers)
        else:
            rates[option] = engine_loop(option, model, images, labels, args.batch_size, args.batches, args.warmup)
        print(f"{option}: {rates[option]:.1f} images/s", file=sys.stderr, flush=True)
    first = args.options[0]
    print(f"{args.model}, batch {args.batch_size}, {args.batches} timed steps, CPU, {torch.get_num_threads()} threads, "
          f"native bfloat16: {cpu_has_native_bf16()}")
    print(f"| option | train images/s | vs {first} |\n|---|---|---|")
    for option, rate in rates.items():
        print(f"| {option} | {rate:.1f} | {rate / rates[first]:.2f}x |")
    print(f"\nfastest: {max(rates, key=rates.get)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
