"""The one training engine shared by backbone training and co-training (they differ only in the loss).

Images stay in memory as a uint8 tensor; each batch is augmented as a batch (random crop with 4-pixel
zero padding and horizontal flip, by index arithmetic), normalised on the device, and run under
autocast (bfloat16 where the device has it, float16 with loss scaling otherwise) in channels-last
layout; on the CPU, small-map convolutions get a faster weight gradient (utils/fastconv.py). Every epoch's randomness is drawn from generators seeded by ``(seed, epoch)``, so a run
resumed from its last finished epoch continues exactly as if it had not been interrupted.
Under ``torchrun`` the same code runs data-parallel (DistributedDataParallel, gloo or NCCL).
"""
import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .inputs import normalization_of, to_input
from .fastconv import use_unfold_weight_grad
from .generate import generate, load_images
from .io import save_checkpoint, save_torch, write_csv
from .paths import BEST, FINAL, STATE, TRAIN_LOG, epoch_file

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding and random horizontal flip, for a whole
    ``(N, H, W, C)`` uint8 batch at once (the batched twin of RandomCrop(32, 4) + RandomHorizontalFlip)."""
    n, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    ar_w = torch.arange(w)
    cols = ox + torch.where(flip, w - 1 - ar_w, ar_w)
    rows = oy + torch.arange(h)
    dev = images.device    # the draws come from the CPU generator, so a run is the same on every device
    return padded[torch.arange(n, device=dev)[:, None, None], rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16). Without it oneDNN emulates bfloat16,
    and a training step runs several times slower than in float32 (measured: 5x on an AVX2-only EPYC)."""
    flags = {}
    probe = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)   # torch >= 2.3
    if probe is not None:
        with contextlib.suppress(Exception):
            flags = probe()
    if isinstance(flags, dict) and ("avx512_bf16" in flags or "amx_bf16" in flags):
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    with contextlib.suppress(OSError):
        words = set(Path("/proc/cpuinfo").read_text().split())
        return bool(words & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_amp(device: torch.device, amp: str = "auto") -> Tuple[str, str]:
    """``(amp, why)``: ``auto`` becomes bf16 where the device computes it natively (CUDA with bf16 support, a CPU
    with AVX512-BF16 or AMX), fp16 on other GPUs, and off (float32) on other CPUs."""
    if amp != "auto":
        return amp, f"{amp} (asked for)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: bf16 (the GPU supports bfloat16)"
        return "fp16", "auto: fp16 with loss scaling (the GPU lacks bfloat16)"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "auto: bf16 (the CPU has native bfloat16: AVX512-BF16 or AMX)"
        return "off", "auto: float32 (the CPU has no native bfloat16, where it is emulated and slower)"
    return "fp16", f"auto: fp16 on {device.type}"


def autocast(device: torch.device, amp: str = "auto"):
    """``(context factory, GradScaler or None)`` for ``amp`` in auto, bf16, fp16, off (see :func:`resolve_amp`)."""
    amp, _ = resolve_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext, None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def distributed() -> Tuple[int, int]:
    """``(rank, world size)``; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def load_splits(cfg, layout):
    """``((train images, labels) as tensors, (test images, labels) as arrays)`` of the in-distribution set,
    read through the same sources and cache as generate_datasets.py (rank 0 writes, the others wait)."""
    rank, world = distributed()
    if rank == 0:
        generate(cfg, layout)
    if world > 1:
        dist.barrier()
    train_x, train_y, _ = load_images(layout, cfg.ind, cfg.tag, "train")
    test_x, test_y, _ = load_images(layout, cfg.ind, cfg.tag, "test")
    return (torch.from_numpy(np.array(train_x)), torch.from_numpy(train_y)), (test_x, test_y)


def load_test(cfg, layout):
    """``(test images, labels)`` of the in-distribution set alone (an evaluation needs no train split)."""
    generate(replace(cfg, splits=("test",), oods=[]), layout)
    test_x, test_y, _ = load_images(layout, cfg.ind, cfg.tag, "test")
    return test_x, test_y


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_one_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer, loss_fn: LossFn,
                    device: torch.device, batch_size: int, epoch: int, seed: int = 0, amp: str = "auto",
                    batch_scheduler=None, augment: bool = True, progress: bool = True,
                    max_batches: Optional[int] = None,
                    memory_format: torch.memory_format = torch.channels_last) -> Dict[str, float]:
    """One pass over a seeded permutation of ``images`` (uint8 NHWC); returns loss, accuracy, img/s."""
    rank, world = distributed()
    g = epoch_generator(seed, epoch)
    torch.manual_seed(seed * 100_003 + epoch)            # dropout and anything else drawing globally
    order = torch.randperm(len(images), generator=g)[rank::world]
    n_batches = len(order) // batch_size                  # drop the last partial batch, as is usual
    if max_batches:
        n_batches = min(n_batches, max_batches)
    ctx, scaler = autocast(device, amp)
    model.train()
    total_loss = correct = seen = 0
    start = time.perf_counter()
    bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}", unit="batch", leave=False,
               disable=not progress or rank != 0)
    for b in bar:
        idx = order[b * batch_size:(b + 1) * batch_size].to(images.device)
        x = images[idx]
        if augment:
            x = crop_flip(x, g)
        x = to_input(x, device, normalization=normalization_of(model)).contiguous(memory_format=memory_format)
        y = labels[idx].to(device, non_blocking=True)
        with ctx():
            loss, logits = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, batch {b}; lower --lr")
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / max(seen, 1), "train_acc": 100 * correct / max(seen, 1),
            "images_per_s": seen * world / max(seconds, 1e-9)}


@torch.inference_mode()
def evaluate(model: nn.Module, images, labels, device: torch.device, batch_size: int = 500,
             amp: str = "off") -> Dict[str, float]:
    """Test loss and accuracy (float32 unless ``amp`` says otherwise)."""
    ctx, _ = autocast(device, amp)
    model.eval()
    labels = torch.as_tensor(np.asarray(labels))
    total_loss = correct = 0.0
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], device, normalization=normalization_of(model)).contiguous(memory_format=torch.channels_last)
        y = labels[start:start + batch_size].to(device)
        with ctx():
            logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"test_loss": total_loss / len(images), "test_acc": 100 * correct / len(images)}


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float = 0.9
    schedule: str = "step"                  # step (the original's) or onecycle (short runs)
    milestones: Optional[List[int]] = None
    step_size: Optional[int] = None
    gamma: float = 0.1
    nesterov: bool = False
    amp: str = "auto"
    seed: int = 0
    keep_best: bool = False
    compile: bool = False
    max_batches: Optional[int] = None       # cap per epoch, for smoke tests and benchmarks
    init: Optional[str] = None              # checkpoint the weights started from (train_backbone_model --init)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=max(steps_per_epoch, 1))
        return opt, sched, True
    if cfg.schedule == "constant":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), False
    if cfg.step_size:
        return opt, torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma), False
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones or [], cfg.gamma), False


def fit(model: nn.Module, train: Tuple[torch.Tensor, torch.Tensor], test: Tuple[np.ndarray, np.ndarray],
        cfg: TrainConfig, out_dir: Path, device: torch.device, loss_fn: LossFn = cross_entropy,
        resume: bool = False, on_epoch_start: Optional[Callable[[int], None]] = None,
        save=save_checkpoint, keep_epochs: bool = False, progress: bool = True) -> List[Dict]:
    """Train for ``cfg.epochs``, writing ``state.pt`` (resumable), ``final.pt``, optionally ``best.pt`` and
    ``epoch_XXX.pt`` (``keep_epochs``), and ``log.csv`` (one row per epoch, rewritten whole) under ``out_dir``.
    Returns the log rows."""
    rank, world = distributed()
    out_dir = Path(out_dir)
    images, labels = train
    if device.type != "cpu":   # the uint8 images go to the device once; batches are cut and augmented there
        images, labels = images.to(device), labels.to(device)
    model.to(device).to(memory_format=torch.channels_last)
    if device.type == "cpu":
        use_unfold_weight_grad(model)
    steps = len(images) // world // cfg.batch_size
    if cfg.max_batches:
        steps = min(steps, cfg.max_batches)
    if steps == 0:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {len(images) // world} images per process")
    opt, sched, per_batch = make_optimizer(model, cfg, steps)
    if rank == 0:
        logger.info(f"mixed precision: {resolve_amp(device, cfg.amp)[1]}")
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    log, start_epoch, best = [], 0, -1.0
    state_path = out_dir / STATE
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"--resume: no {state_path} to resume from")
        try:   # tensors and plain values only: a state file never runs code when read
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--resume: {state_path} could not be read safely ({type(e).__name__}); it is damaged or "
                             f"not a state this engine wrote. Start again without --resume") from None
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, log, best = state["epoch"], state["log"], state["best"]
    for epoch in range(start_epoch, cfg.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        lr = opt.param_groups[0]["lr"]
        row = {"epoch": epoch + 1, "lr": lr}
        row.update(train_one_epoch(net, images, labels, opt, loss_fn, device, cfg.batch_size, epoch, cfg.seed,
                                   cfg.amp, sched if per_batch else None, progress=progress,
                                   max_batches=cfg.max_batches))
        if not per_batch:
            sched.step()
        row.update(evaluate(model, *test, device))
        log.append(row)
        if rank == 0:
            if progress:
                logger.info(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            save(model, out_dir / FINAL, epoch=epoch + 1, test_acc=row["test_acc"], config=asdict(cfg))
            if keep_epochs:
                save(model, out_dir / epoch_file(epoch + 1), epoch=epoch + 1, test_acc=row["test_acc"])
            if cfg.keep_best and row["test_acc"] > best:
                best = row["test_acc"]
                save(model, out_dir / BEST, epoch=epoch + 1, test_acc=row["test_acc"], config=asdict(cfg))
            save_torch(state_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "epoch": epoch + 1, "log": log, "best": best,
                                    "config": asdict(cfg)})
            write_csv(out_dir / TRAIN_LOG, log)
    return log


def average_state_dicts(states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The uniform average of several state dicts of one architecture (stochastic weight averaging,
    Izmailov et al., 2018, over snapshots such as the ends of successive one-cycle runs). Floating tensors are
    averaged in float32; integer ones (BatchNorm's batch counters) are taken from the first."""
    if not states:
        raise ValueError("nothing to average: give at least one checkpoint")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 2):
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"checkpoint {i} does not have the first one's tensors: averaging needs one architecture")
    return {k: (torch.stack([s[k].float() for s in states]).mean(0) if states[0][k].is_floating_point()
                else states[0][k].clone()) for k in keys}


def recompute_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256,
                        amp: str = "auto", seed: int = 0, progress: bool = True) -> int:
    """Set every BatchNorm's running statistics to their average over one augmented pass, in a seeded random
    order, through ``images`` (uint8 NHWC), as a weight average needs (its statistics are not the average of
    its members'); torch's ``swa_utils.update_bn`` does the pass. The order matters: the pass averages each
    batch's variance, and batches cut from class-sorted images (as generated sets are) would each hold one
    class and miss the variance between classes. Returns the number of BatchNorm layers reset."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    g = epoch_generator(seed, 0)
    order = torch.randperm(len(images), generator=g)
    norm = normalization_of(model)
    ctx, _ = autocast(device, amp)

    def batches():
        for start in tqdm(range(0, len(images), batch_size), desc="batchnorm statistics", unit="batch",
                          disable=not progress):
            x = crop_flip(images[order[start:start + batch_size]], g)
            yield to_input(x, device, normalization=norm).contiguous(memory_format=torch.channels_last)

    model.to(device).to(memory_format=torch.channels_last)
    with ctx():
        torch.optim.swa_utils.update_bn(batches(), model)
    model.eval()
    return len(bns)
