"""Speed of the ``ms`` loss (forward + backward) against PML, the per-anchor reference and the matmul floor.

For each batch size m (d = 512, P x 5 batches, float32) it prints the median time of one forward +
backward pass of ``losses.build("ms")``, of pytorch-metric-learning's ``MultiSimilarityLoss`` on
``MultiSimilarityMiner`` pairs, and of the per-anchor reference (``losses.reference``), all measured in
the same run, together with the three matrix products no implementation can avoid (S = E E^T and the
two m x m by m x d products of the backward). Ratios: PML / ms, reference / ms, ms / matmuls.

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

import losses  # noqa: E402
from losses.reference import reference_loss  # noqa: E402

Step = Callable[[], None]


def median_seconds(step: Step, device: torch.device, budget_s: float, min_runs: int, max_runs: int) -> float:
    """Median wall time of ``step`` after one warm-up, over at least ``min_runs`` runs or ``budget_s`` seconds."""

    def timed() -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()
    runs: list[float] = []
    while len(runs) < min_runs or (sum(runs) < budget_s and len(runs) < max_runs):
        runs.append(timed())
    return statistics.median(runs)


def loss_step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], emb: torch.Tensor, labels: torch.Tensor) -> Step:
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
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per measurement")
    parser.add_argument("--reference-max-m", type=int, default=4000, help="skip the reference above this m")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ours = losses.build("ms")
    pml = pml_ms(ours.hparams)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# loss_speed: torch {torch.__version__}, {platform.machine()}, device {device}, "
        f"threads {torch.get_num_threads()}, load {load:.2f}, d={args.dim}, float32, ms preset paper"
    )
    print("| m | ms (ms) | PML (ms) | reference (ms) | 3 matmuls (ms) | PML / ms | reference / ms | ms / matmuls |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for m in args.sizes:
        emb = F.normalize(torch.randn(m, args.dim, generator=gen), dim=1).to(device)
        labels = (torch.arange(m) // args.per_class).to(device)
        timings = {
            "ms": median_seconds(loss_step(ours, emb, labels), device, args.budget, 5, 200),
            "pml": median_seconds(loss_step(pml, emb, labels), device, args.budget, 3, 100),
            "matmuls": median_seconds(matmul_step(emb), device, args.budget, 5, 200),
        }
        if m <= args.reference_max_m:
            reference = loss_step(lambda e, y: reference_loss("ms", e, y, ours.hparams), emb, labels)
            timings["reference"] = median_seconds(reference, device, args.budget, 1, 5)
        ms_time = timings["ms"]
        ref = timings.get("reference")
        print(
            f"| {m} | {1e3 * ms_time:.2f} | {1e3 * timings['pml']:.2f} | "
            f"{f'{1e3 * ref:.1f}' if ref else 'skipped'} | {1e3 * timings['matmuls']:.2f} | "
            f"{timings['pml'] / ms_time:.1f}x | {f'{ref / ms_time:.0f}x' if ref else '-'} | "
            f"{ms_time / timings['matmuls']:.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
