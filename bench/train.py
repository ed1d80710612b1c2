"""How fast the training engine is, against plain PyTorch, on the same model and data.

    python bench/train.py [--data-dir ../shared/data/cifar-10-subset] [--repeats 5]
                          [--batch 512] [--models initial wide] [--json]

Printed as one table; every comparison is made within this one run:

1. Training throughput (images/s): :func:`lemo_nade.engine.train.train_epoch` (the loop
   every candidate trains with) against a plain hand-written loop over the same
   in-memory uint8 tensors (gather, float, normalise, forward, cross-entropy, zero_grad,
   backward, Adam step), same model and initial weights, same data, batch and
   optimizer. No augmentation in either. Epochs alternate ours/plain (the order flips
   each repeat) after one warm-up epoch each, so machine load hits both alike; the
   ratio is the median of the per-repeat ratios. Target >= 0.95.
2. Augmentation (images/s): :func:`lemo_nade.engine.augment.augment` (one batched affine
   warp) against a per-image loop doing the same warp one image at a time, on a batch of
   ``--batch`` CIFAR images, interleaved the same way. Target >= 5x.
3. Achieved FLOP/s of training: FLOPs of one training step (forward + backward) counted
   with ``torch.utils.flop_counter.FlopCounterMode``, times our measured steps/s, as a
   share of this machine's float32 matmul peak (best of ``torch.mm`` on 2048x2048).
4. The allocator setting the engine makes (:func:`lemo_nade.engine.train.
   tune_cpu_allocator`): the plain loop in fresh processes with glibc's default malloc
   settings against the same loop with the engine's settings, alternating, one process
   per measurement (warm-up epoch, then the best of two). Parts 1-3 run in this process
   after the engine's setting is made, so both loops there share it.

Models: ``initial`` is the search's first CIFAR-10 candidate (the offline architect's
initial model, paper Sec. 5.1: two conv blocks, ~87k parameters, memory-bound);
``wide`` is a four-block 32-64-128-256 CNN (~115 MFLOP per image forward). The data is
the real CIFAR-10 subset when ``--data-dir`` exists (the first ``--images`` of its
training split per epoch), else random uint8 images of the same shape (said in the
output). The load average is printed: on a shared machine timings move with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lemo_nade.architects.offline.arch import initial
from lemo_nade.architects.offline.render import render
from lemo_nade.engine.augment import PAPER_AUGMENT, affine_matrices, augment, warp
from lemo_nade.engine.data import Split, make_split
from lemo_nade.engine.loaders import RawData, load
from lemo_nade.engine.train import Runtime, make_optimizer, train_epoch, tune_cpu_allocator
from lemo_nade.engine.worker import _build, load_candidate
from lemo_nade.records import TaskSpec
from machine import conditions
from train_table import print_table

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar-10-subset"
TASK = TaskSpec("cifar10", (3, 32, 32), 10)


def wide_model() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    return nn.Sequential(
        block(3, 32),
        block(32, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.MaxPool2d(2),
        block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "initial":
        return _build(load_candidate(render(initial(TASK), TASK)))
    if name == "wide":
        return wide_model()
    raise SystemExit(f"unknown model {name!r}; use initial or wide")


def get_split(data_dir: Path, images: int) -> tuple[Split, str]:
    """The 9:1 split of the CIFAR-10 subset, its training part cut to ``images``."""
    if (data_dir / "cifar-10-batches-py").is_dir() or (data_dir / "data_batch_1").is_file():
        split = make_split(load("cifar10", str(data_dir)), 0.1, seed=0)
        text = f"CIFAR-10 subset from {data_dir}"
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (5085, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (5085,), generator=g)
        split = make_split(RawData(x, y, x[:10], y[:10], 10), 0.1, seed=0)
        text = f"random uint8 images of CIFAR shape ({data_dir} absent)"
    split = replace(split, x_train=split.x_train[:images], y_train=split.y_train[:images])
    return split, f"{text}, {len(split.x_train)} training images per epoch"


def plain_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch: int,
    generator: torch.Generator,
) -> None:
    """The hand-written baseline: the least a training epoch over in-memory tensors does."""
    model.train()
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    for idx in torch.randperm(len(x), generator=generator).split(batch):
        xb = (x[idx].float() - mean) / std
        loss = F.cross_entropy(model(xb), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


Timed = tuple[list[float], list[float]]  # wall seconds, CPU seconds (this process)


def interleaved(
    a: Callable[[], object], b: Callable[[], object], repeats: int
) -> tuple[Timed, Timed]:
    """Wall and CPU times of ``a`` and ``b``, alternating (the order flips every repeat),
    after one warm-up call each."""
    a()
    b()
    out: dict[int, Timed] = {0: ([], []), 1: ([], [])}
    for r in range(repeats):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            fn = a if which == 0 else b
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            out[which][0].append(time.perf_counter() - wall)
            out[which][1].append(time.process_time() - cpu)
    return out[0], out[1]


def ratio_stats(ours: Timed, base: Timed, images_ours: int, images_base: int) -> dict[str, Any]:
    """Images/s from median wall times; ratios per repeat pair (ours over baseline)."""
    wall = [
        (images_ours / to) / (images_base / tb) for to, tb in zip(ours[0], base[0], strict=True)
    ]
    cpu = [(images_ours / to) / (images_base / tb) for to, tb in zip(ours[1], base[1], strict=True)]
    return {
        "ours_ips": images_ours / statistics.median(ours[0]),
        "base_ips": images_base / statistics.median(base[0]),
        "ratio": statistics.median(wall),
        "ratio_min": min(wall),
        "ratio_max": max(wall),
        "cpu_ratio": statistics.median(cpu),
    }


def bench_training(model_name: str, split: Split, batch: int, repeats: int) -> dict[str, Any]:
    ours_model = make_model(model_name)
    plain_model = copy.deepcopy(ours_model)
    device = torch.device("cpu")
    ours_opt = make_optimizer(ours_model, 1e-3, 0.0, device)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)  # = ours on CPU
    rt = Runtime(device, None, False)  # what "auto" resolves to on CPU
    g_ours, g_plain = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    epoch = [0]

    def ours() -> None:
        epoch[0] += 1
        train_epoch(ours_model, split, ours_opt, batch, g_ours, None, epoch[0], rt)

    def plain() -> None:
        plain_epoch(
            plain_model,
            plain_opt,
            split.x_train,
            split.y_train,
            split.mean,
            split.std,
            batch,
            g_plain,
        )

    t_ours, t_plain = interleaved(ours, plain, repeats)
    n = len(split.x_train)
    stats = ratio_stats(t_ours, t_plain, n, n)
    flops = step_flops(make_model(model_name), split, batch)
    return {
        "model": model_name,
        "params": sum(p.numel() for p in ours_model.parameters()),
        **stats,
        "step_gflop": flops / 1e9,
        "achieved_gflops": flops / batch * stats["ours_ips"] / 1e9,
    }


def step_flops(model: nn.Module, split: Split, batch: int) -> float:
    """FLOPs of one training step (forward + backward) at ``batch``, counted."""
    model.train()
    xb = split.normalize(split.x_train[:batch])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(xb), split.y_train[:batch]).backward()
    return float(counter.get_total_flops())


def per_image_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The baseline: the same random warp, one image at a time (as a per-sample transform
    in a Dataset would do)."""
    _, _, h, w = x.shape
    out = []
    for img in x:
        theta = affine_matrices(1, h, w, generator, PAPER_AUGMENT)
        out.append(warp(img[None], theta)[0])
    return torch.stack(out)


def bench_augment(split: Split, batch: int, repeats: int, calls: int = 32) -> dict[str, Any]:
    """``calls`` batched warps of ``batch`` images against one per-image pass over them
    (each measurement ~0.1 s here, so a stolen time slice does not decide it)."""
    xb = split.normalize(split.x_train[:batch])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)

    def batched() -> None:
        for _ in range(calls):
            augment(xb, g1)

    t_batched, t_loop = interleaved(batched, lambda: per_image_augment(xb, g2), repeats)
    return ratio_stats(t_batched, t_loop, calls * len(xb), len(xb))


def child_plain(model_name: str, data_dir: Path, images: int, batch: int, tuned: bool) -> float:
    """In a fresh process: the plain loop's epoch time (warm-up, then best of two)."""
    if tuned:
        tune_cpu_allocator()
    split, _ = get_split(data_dir, images)
    model = make_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        plain_epoch(model, optimizer, split.x_train, split.y_train, split.mean, split.std, batch, g)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def bench_allocator(
    model_name: str, data_dir: Path, images: int, batch: int, repeats: int
) -> dict[str, Any]:
    n = len(get_split(data_dir, images)[0].x_train)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for tuned in (False, True) if r % 2 == 0 else (True, False):
            cmd = [sys.executable, __file__, "--child-plain", model_name, "--data-dir"]
            cmd += [str(data_dir), "--images", str(images), "--batch", str(batch)]
            cmd += ["--tuned", str(int(tuned))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            times[tuned].append(float(out.strip().splitlines()[-1]))
    ratios = [d / t for d, t in zip(times[False], times[True], strict=True)]
    return {
        "model": model_name,
        "default_ips": n / statistics.median(times[False]),
        "tuned_ips": n / statistics.median(times[True]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 ``torch.mm`` rate on this machine, FLOP/s (2 n^3 per product)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--models", nargs="+", default=["initial", "wide"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--allocator-models", nargs="*", default=["initial"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child-plain", help=argparse.SUPPRESS)
    parser.add_argument("--tuned", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_plain:
        print(child_plain(args.child_plain, args.data_dir, args.images, args.batch, args.tuned > 0))
        return 0
    before = conditions()
    allocator = [
        bench_allocator(m, args.data_dir, args.images, args.batch, args.repeats)
        for m in args.allocator_models
    ]
    tuned = tune_cpu_allocator()
    split, data_text = get_split(args.data_dir, args.images)
    peak = matmul_peak()
    training = [bench_training(m, split, args.batch, args.repeats) for m in args.models]
    aug = bench_augment(split, args.batch, args.repeats)
    peak = max(peak, matmul_peak())  # once more at the end: the best of both
    after = conditions()
    result = {
        "conditions": {"before": before, "after": after, "data": data_text},
        "batch": args.batch,
        "repeats": args.repeats,
        "matmul_peak_gflops": peak / 1e9,
        "training": training,
        "augment": aug,
        "allocator_tuned": tuned,
        "allocator": allocator,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
