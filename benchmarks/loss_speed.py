"""Speed of the ``ms`` loss (forward + backward) against PML, the per-anchor reference and the matmul floor.

For each batch size m (d = 512, P x 5 batches, float32) it prints the median time of one forward +
backward pass of ``losses.build("ms")`` (its fused forward, and its generic miner + weighting path),
of pytorch-metric-learning's ``MultiSimilarityLoss`` on ``MultiSimilarityMiner`` pairs, and of the
per-anchor reference (``losses.reference``), all measured in the same run, together with the three
matrix products no implementation can avoid (S = E E^T and the two m x m by m x d products of the
backward). Ratios: PML / ms, reference / ms, ms / matmuls.
The implementations are timed round-robin, so a change of load on a shared machine hits all alike;
the last column, the ratio of the fastest runs, is the least sensitive to other processes.

    .venv/bin/python benchmarks/loss_speed.py [--sizes 80 256 1000 4000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import losses
from losses.reference import reference_loss

Step = Callable[[], None]


def interleaved_medians(
    steps: dict[str, Step], device: torch.device, budget_s: float, min_rounds: int, rounds_of: dict[str, int]
) -> dict[str, tuple[float, float]]:
    """(median, minimum) wall time of each step, timed round-robin (one run of each per round) after one
    warm-up.

    Interleaving makes a change of machine load hit every implementation alike. A step listed in
    ``rounds_of`` (the slow reference) runs in at most that many rounds.
    """

    def timed(step: Step) -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for name, step in steps.items():
        if name not in rounds_of:  # the slow reference needs no warm-up
            timed(step)
    runs: dict[str, list[float]] = {name: [] for name in steps}
    began = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - began < budget_s and rounds < 200):
        for name, step in steps.items():
            if len(runs[name]) < rounds_of.get(name, 200):
                runs[name].append(timed(step))
        rounds += 1
    return {name: (statistics.median(times), min(times)) for name, times in runs.items()}


def loss_step(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], emb: torch.Tensor, labels: torch.Tensor
) -> Step:
    """One forward + backward of ``loss_fn`` from fresh leaf embeddings."""

    def step() -> None:
        leaf = emb.detach().requires_grad_()
        loss_fn(leaf, labels).backward()

    return step


def matmul_step(emb: torch.Tensor) -> Step:
    """S = E E^T and the backward's two products G E and G^T E, with G an m x m matrix."""
    grad_sim = torch.randn(emb.shape[0], emb.shape[0], device=emb.device, dtype=emb.dtype)

    def step() -> None:
        emb @ emb.T
        grad_sim @ emb
        grad_sim.T @ emb

    return step


def pml_ms(hparams: dict[str, float]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners

    loss = pml_losses.MultiSimilarityLoss(alpha=hparams["alpha"], beta=hparams["beta"], base=hparams["lam"])
    miner = miners.MultiSimilarityMiner(epsilon=hparams["eps"])
    return lambda emb, labels: loss(emb, labels, miner(emb, labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[80, 256, 1000, 4000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed rounds per batch size")
    parser.add_argument("--reference-max-m", type=int, default=4000, help="skip the reference above this m")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ours = losses.build("ms")
    generic = losses.build("ms")
    generic.kernel = None  # the miner + weighting path, without the fused forward
    pml = pml_ms(ours.hparams)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# loss_speed: torch {torch.__version__}, {platform.machine()}, device {device}, "
        f"threads {torch.get_num_threads()}, load {load:.2f}, d={args.dim}, float32, ms preset paper"
    )
    print(
        "| m | ms (ms) | ms, generic path (ms) | PML (ms) | reference (ms) | 3 matmuls (ms) | PML / ms "
        "| reference / ms | ms / matmuls | min ms / min matmuls |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for m in args.sizes:
        emb = F.normalize(torch.randn(m, args.dim, generator=gen), dim=1).to(device)
        labels = (torch.arange(m) // args.per_class).to(device)
        steps = {
            "ms": loss_step(ours, emb, labels),
            "generic": loss_step(generic, emb, labels),
            "pml": loss_step(pml, emb, labels),
            "matmuls": matmul_step(emb),
        }
        if m <= args.reference_max_m:
            steps["reference"] = loss_step(lambda e, y: reference_loss("ms", e, y, ours.hparams), emb, labels)
        ref_rounds = max(1, min(5, int(args.budget * 100 / m)))
        timings = interleaved_medians(steps, device, args.budget, 5, {"reference": ref_rounds})
        (ours_med, ours_min), (pml_med, _), (mm_med, mm_min) = (
            timings["ms"],
            timings["pml"],
            timings["matmuls"],
        )
        ref = timings["reference"][0] if "reference" in timings else None
        print(
            f"| {m} | {1e3 * ours_med:.2f} | {1e3 * timings['generic'][0]:.2f} | {1e3 * pml_med:.2f} | "
            f"{f'{1e3 * ref:.1f}' if ref else 'skipped'} | "
            f"{1e3 * mm_med:.2f} | {pml_med / ours_med:.1f}x | {f'{ref / ours_med:.0f}x' if ref else '-'} | "
            f"{ours_med / mm_med:.2f}x | {ours_min / mm_min:.2f}x |",
            flush=True,
        )
    print(f"# load at the end: {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
