"""Training throughput: this repository's engine against a plain loop in the original code's style.

    python benchmarks/train_speed.py --model vgg16 --batches 12

The plain loop: float32, torchvision transforms applied to one PIL image at a time (RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader, NCHW. The engine: the same SGD step on the
same model, with batched tensor augmentation, channels-last, autocast (bfloat16 on this CPU) and the
faster small-map weight gradient (utils/fastconv.py), as ``utils.engine.fit`` sets it up.
Both run ``--batches`` timed steps after warm-up steps; training images per second and their ratio are
printed from one run.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import PRESETS, create_model  # noqa: E402
from utils.data import find_source, load_subset  # noqa: E402
from utils.engine import cross_entropy, train_one_epoch  # noqa: E402
from utils.fastconv import use_unfold_weight_grad  # noqa: E402


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


def engine_loop(model, images, labels, batch_size, batches, warmup):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    use_unfold_weight_grad(model.to(memory_format=torch.channels_last))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    train_one_epoch(model, x, y, opt, cross_entropy, torch.device("cpu"), batch_size, 0, max_batches=warmup,
                    progress=False)
    stats = train_one_epoch(model, x, y, opt, cross_entropy, torch.device("cpu"), batch_size, 1,
                            max_batches=batches, progress=False)
    return stats["images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="where the cifar10 train images are found")
    p.add_argument("--model", default="vgg16", help="model to train")
    p.add_argument("--batch-size", type=int, default=128, help="batch size")
    p.add_argument("--batches", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the plain loop (the original's default)")
    args = p.parse_args()
    source, missing = find_source("cifar10", "train", [args.source_root])
    if source is None:
        sys.exit(missing)
    n = args.batch_size * (args.batches + args.warmup + 2)
    images, labels = load_subset(source, n, seed=0, progress=False)
    torch.manual_seed(0)
    ours = engine_loop(create_model(args.model), images, labels, args.batch_size, args.batches, args.warmup)
    torch.manual_seed(0)
    plain = plain_loop(create_model(args.model), images, labels, args.batch_size, args.batches, args.warmup,
                       args.workers)
    print(f"{args.model}, batch {args.batch_size}, {args.batches} timed steps, CPU, {torch.get_num_threads()} threads")
    print("| loop | train images/s |\n|---|---|")
    print(f"| plain (float32, PIL transforms, DataLoader with {args.workers} workers) | {plain:.1f} |")
    print(f"| this repository (bf16 autocast, channels-last, batched augmentation, fastconv) | {ours:.1f} |")
    print(f"\nspeed-up: {ours / plain:.2f}x")


if __name__ == "__main__":
    main()
