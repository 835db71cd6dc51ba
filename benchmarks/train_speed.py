"""Trainer overhead: images/s of ``harness.train.train_cell`` against a bare hand-written PyTorch loop.

Both train the same model on the same batches (same sampler, same DataLoader settings) with the same
loss and optimiser, in the same process, alternating repeats so that machine load hits both alike.
Throughput is measured over the training iterations only (the harness's own per-window log,
evaluation excluded), after ``--warmup`` iterations. Prints the ratio harness/bare; the target is an
overhead of at most 5% (ratio >= 0.95).

It also prints how close a training step comes to the machine's compute limit: the floating-point
operations of one step (forward + backward of the model, counted by ``torch.utils.flop_counter``) times
the harness's steps per second, against the FLOP/s of a large float32 matrix product (``--gemm-size``)
on the same threads in the same run; and the machine class (AVX-512 or AVX2, from /proc/cpuinfo) and
the load average, which every recorded figure needs.

    python benchmarks/train_speed.py                      # glyphs + small_cnn on CPU
    python benchmarks/train_speed.py --backbone bninception --dataset synthetic --image-size 224  # GPU
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.builders import build_model, build_optimizer, load_splits
from harness.config import CellConfig
from harness.data import DatasetSplits
from harness.errors import ArgumentParser
from harness.models import freeze_batchnorm_statistics
from harness.records import CellStatus
from harness.results import CellPaths
from harness.train import autocast_dtype, pick_device, seed_everything, train_cell, training_batches


class SyntheticImages(torch.utils.data.Dataset):
    """Random images with P x M-friendly labels: measures compute, not JPEG decoding."""

    def __init__(self, count: int, classes: int, size: int) -> None:
        self.labels = np.arange(count, dtype=np.int64) % classes
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(index)
        return torch.randn(3, self.size, self.size, generator=gen), int(self.labels[index])


def make_cell(args: argparse.Namespace) -> CellConfig:
    backbone = args.backbone
    return CellConfig.model_validate(
        {
            "experiment": "train-speed",
            "dataset": "glyphs" if args.dataset == "glyphs" else "cub",
            "loss": {"name": args.loss},
            "embedding_size": 64,
            "seed": 0,
            "data": {
                "classes_per_batch": args.batch // 5,
                "samples_per_class": 5,
                "workers": args.workers,
                "val_fraction": 0.2,
                "image_size": args.image_size,
            },
            "model": {
                "backbone": backbone,
                "pretrained": False,
                "freeze_bn": backbone != "small_cnn",
                **({"width": args.width} if backbone == "small_cnn" else {}),
            },
            "optim": {"lr_backbone": 1e-3, "lr_head": 1e-3},
            "train": {
                "iterations": args.iterations,
                "eval_every": args.iterations,
                "log_every": args.window,
                "select_on": "val",
            },
            "evaluate": {"metrics": ["recall"], "ks": [1]},
        }
    )


def bare_loop(cell: CellConfig, splits: DatasetSplits, iterations: int, window: int) -> list[float]:
    """The reference: sampler -> DataLoader -> forward -> loss -> backward -> step, nothing else."""
    device = pick_device()
    amp = autocast_dtype(cell.train.amp, device)
    seed_everything(cell.seed, cell.train.deterministic, device)
    model = build_model(cell, int(splits.train[0][0].shape[0])).to(device)
    if cell.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = cell.loss.build().to(device)
    optimizer = build_optimizer(cell, model)
    batches = training_batches(splits, cell, 0, None)
    rates, images_seen, started = [], 0, time.perf_counter()
    for iteration in range(1, iterations + 1):
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        if cell.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        model.train()
        if cell.model.freeze_bn:
            freeze_batchnorm_statistics(model)
        with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
            emb = model(images)
        loss = loss_fn(emb.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += labels.shape[0]
        if iteration % window == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(images_seen / (time.perf_counter() - started))
            images_seen, started = 0, time.perf_counter()
    return rates


def harness_loop(cell: CellConfig, splits: DatasetSplits) -> list[float]:
    """The harness trainer on the same cell and data; its own log gives images/s per window."""
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        paths = CellPaths(Path(tmp) / "cell")
        outcome = train_cell(cell, paths, splits=splits, progress=False)
        assert outcome.status == CellStatus.FINISHED, outcome.reason
        with paths.train_log.open() as handle:
            return [float(row["images_per_s"]) for row in csv.DictReader(handle)]


def step_flops(cell: CellConfig, splits: DatasetSplits) -> float:
    """Floating-point operations of one training step's forward and backward pass, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cell, int(splits.train[0][0].shape[0])).to(pick_device())
    images, labels = next(training_batches(splits, cell, 0, None))
    images = images.to(pick_device())
    with FlopCounterMode(display=False) as counter:
        model(images).square().sum().backward()
    return counter.get_total_flops() / labels.shape[0]


def gemm_flops(size: int, repeats: int = 5) -> float:
    """FLOP/s of a ``size`` x ``size`` float32 matrix product on torch's current threads (best of
    ``repeats``)."""
    device = pick_device()
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def machine_class() -> str:
    """``AVX-512``, ``AVX2`` or ``other``, from the CPU flags of /proc/cpuinfo."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["glyphs", "synthetic"], default="glyphs")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--loss", default="ms")
    parser.add_argument("--width", type=int, default=16, help="small_cnn width (16: the main job's)")
    parser.add_argument("--batch", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 for glyphs, 224 otherwise")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="iterations left out of the medians")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="the reference matrix product's side")
    args = parser.parse_args()
    if args.image_size is None:
        args.image_size = 32 if args.dataset == "glyphs" else 224
    if args.threads:
        torch.set_num_threads(args.threads)

    cell = make_cell(args)
    splits = load_splits(cell) if args.dataset == "glyphs" else None
    if splits is None:
        fake = SyntheticImages(4000, 400, args.image_size)
        held_out = SyntheticImages(200, 40, args.image_size)
        splits = DatasetSplits(
            train=fake, val=held_out, test=held_out, eval_mode="leave_one_out", default_ks=(1,)
        )
    device = pick_device()
    skip = args.warmup // args.window
    bare_rates, harness_rates = [], []
    for _ in range(args.repeats):
        bare_rates += bare_loop(cell, splits, args.iterations, args.window)[skip:]
        harness_rates += harness_loop(cell, splits)[skip:]
    bare, ours = statistics.median(bare_rates), statistics.median(harness_rates)
    print(
        f"date {time.strftime('%Y-%m-%d')}; device: {device}"
        f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}; "
        f"threads {torch.get_num_threads()}; dataset {args.dataset}; backbone {args.backbone}; "
        f"batch {args.batch}; width {args.width}; loss {args.loss}; "
        f"{args.iterations} iterations x {args.repeats} repeats"
    )
    print(
        f"bare loop      : {bare:8.1f} images/s (median of {len(bare_rates)} windows of {args.window} "
        "iterations)"
    )
    print(f"harness trainer: {ours:8.1f} images/s (median of {len(harness_rates)} windows)")
    print(f"ratio harness/bare = {ours / bare:.3f}  (overhead {100 * (1 - ours / bare):+.1f}%; target <= 5%)")
    per_image, peak = step_flops(cell, splits), gemm_flops(args.gemm_size)
    achieved = per_image * ours
    print(
        f"training step: {per_image / 1e6:.2f} MFLOP per image -> {achieved / 1e9:.1f} GFLOP/s; "
        f"{args.gemm_size}^2 float32 matrix product: {peak / 1e9:.1f} GFLOP/s; "
        f"ratio step/matmul = {achieved / peak:.3f}"
    )
    print(f"machine: {machine_class()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
