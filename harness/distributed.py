"""Data-parallel training with torch.distributed: process-group setup and gathers that keep gradients.

Pair-based losses need the whole batch, so every rank embeds its share of the global P x M batch,
the embeddings are all-gathered *with* gradient, and every rank computes the same loss over the full
batch. Each rank's local embeddings then receive ``world_size`` times their true gradient (one copy
from every rank's identical loss), which DDP's gradient averaging divides out again; the parameter
gradient equals single-process training on the full batch. Launch with ``torchrun``; on CPU the
``gloo`` backend is used, on GPU ``nccl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a multi-process run."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistContext | None:
    """Join the process group that ``torchrun`` describes in the environment; None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def shutdown(ctx: DistContext | None) -> None:
    """Leave the process group."""
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` rows (rank order); the result keeps the autograd graph."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(local.contiguous()), dim=0)


def gather_rows(local: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's ``local`` rows (rank order) without gradient; ranks may hold different
    counts."""
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    biggest = int(max(c.item() for c in counts))
    padded = torch.zeros((biggest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts, strict=True)], dim=0)


def broadcast_flag(flag: bool, ctx: DistContext | None) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks in step on failures)."""
    if ctx is None:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
