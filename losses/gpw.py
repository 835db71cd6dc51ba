"""GPWLoss: a pair-based loss as a miner plus a pair weighting over S = E E^T, with a GPW backward.

General Pair Weighting (Eq. 1-3): dL/dS is the signed weight matrix W = w_neg - w_pos, so the
gradient with respect to the embeddings is dL/dE = (W + W^T) E. The forward pass computes S, the
selection and W in one vectorised pass over the batch (no loop over anchors) and keeps only E and W
for the backward, instead of the m x m intermediates autograd would store.

Numerics: the m x m loss math runs in float32 (float64 stays float64), also under bf16/fp16
autocast, where S is computed from the upcast embeddings; the gradient returns in the input dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from losses.miners import Miner
from losses.pairs import label_masks
from losses.weightings import Weighted, Weighting

STAT_KEYS = ("pos_pairs", "neg_pairs", "pos_weight_mean", "neg_weight_mean")


def loss_dtype(embeddings: Tensor) -> torch.dtype:
    """The dtype of the m x m loss math: float64 for float64 input, float32 for everything else."""
    return torch.float64 if embeddings.dtype == torch.float64 else torch.float32


def stats_from_sums(
    pos_pairs: float, neg_pairs: float, pos_total: float, neg_total: float
) -> dict[str, float]:
    """last_stats from the selected-pair counts and the sums of their weights (mean 0 when none)."""
    return {
        "pos_pairs": pos_pairs,
        "neg_pairs": neg_pairs,
        "pos_weight_mean": pos_total / pos_pairs if pos_pairs else 0.0,
        "neg_weight_mean": neg_total / neg_pairs if neg_pairs else 0.0,
    }


def weight_sums(out: Weighted) -> Tensor:
    """Selected-pair counts and weight sums of one weighting output, on its device (no transfer)."""
    return torch.stack(
        [
            out.selected.pos.count_nonzero().to(out.w_pos.dtype),
            out.selected.neg.count_nonzero().to(out.w_pos.dtype),
            out.w_pos.sum(),
            out.w_neg.sum(),
        ]
    )


class Fused(NamedTuple):
    """A fused forward: the scalar loss, dL/dS (m, m), and the pair sums its last_stats come from.

    ``sums`` is ``(pos_pairs, neg_pairs, pos_weight_sum, neg_weight_sum)`` on the loss's device: it is
    read (one device-to-host transfer) only when someone looks at :attr:`stats`.
    """

    loss: Tensor
    grad_sim: Tensor
    sums: Tensor

    @property
    def stats(self) -> dict[str, float]:
        """The last_stats this forward implies (:func:`stats_from_sums` of :attr:`sums`)."""
        return stats_from_sums(*self.sums.tolist())


class Kernel(Protocol):
    """A fused forward for one loss: (S, labels) -> loss, dL/dS and stats, equal to miner + weighting."""

    def __call__(self, sim: Tensor, labels: Tensor) -> Fused: ...


def generic_forward(loss: GPWLoss, sim: Tensor, labels: Tensor) -> Fused:
    """Miner, then weighting, on dense masks; dL/dS = w_neg - w_pos (built in place)."""
    out = loss.weigh(sim, labels)
    sums = weight_sums(out)
    return Fused(out.loss, out.w_neg.sub_(out.w_pos), sums)


class _PairWeightedSimilarity(torch.autograd.Function):
    """L(E E^T, y) with the backward dL/dE = (W + W^T) E from the closed-form weights W = dL/dS."""

    @staticmethod
    def forward(ctx: FunctionCtx, embeddings: Tensor, labels: Tensor, loss: GPWLoss) -> Tensor:
        sim = embeddings @ embeddings.T
        fused = loss.kernel(sim, labels) if loss.kernel is not None else generic_forward(loss, sim, labels)
        loss._last_sums = fused.sums
        ctx.save_for_backward(embeddings, fused.grad_sim)
        return fused.loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: Tensor) -> tuple[Tensor, None, None]:
        embeddings, grad_sim = ctx.saved_tensors  # type: ignore[attr-defined]  # set by autograd, not in stubs
        sym = grad_sim + grad_sim.T
        return (sym @ embeddings).mul_(grad_loss), None, None


class GPWLoss(nn.Module):
    """A pair-based loss: ``miner`` selects pairs of S, ``weighting`` weights them (GPW, Eq. 3).

    ``kernel``, when given, is a fused forward computing the same loss, dL/dS and stats faster (used by
    ``forward``; ``weigh`` and ``pair_weights`` always take the generic, autograd-checked path).

    Call as ``loss(embeddings, labels)`` with L2-normalised embeddings (m, d) and integer labels (m,);
    returns a scalar. ``last_stats`` describes the last call; ``pair_weights`` gives (w_pos, w_neg).
    The statistics stay on the device until ``last_stats`` is read, so a training loop that reads
    them every few steps does not wait for the device at every step.
    """

    def __init__(
        self,
        name: str,
        miner: Miner,
        weighting: Weighting,
        hparams: dict[str, Any],
        kernel: Kernel | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.miner = miner
        self.weighting = weighting
        self.kernel = kernel
        self.hparams = dict(hparams)
        self._last_sums: Tensor | None = None  # Fused.sums of the last call, still on the device

    @property
    def last_stats(self) -> dict[str, float]:
        """Selected-pair counts and mean pair weights of the last call (zeros before the first)."""
        if self._last_sums is None:
            return dict.fromkeys(STAT_KEYS, 0.0)
        return stats_from_sums(*self._last_sums.tolist())

    def weigh(self, sim: Tensor, labels: Tensor) -> Weighted:
        """Mine and weight the pairs of a similarity matrix; differentiable in ``sim`` if it requires grad."""
        masks = label_masks(labels.to(sim.device))
        return self.weighting(sim, self.miner(sim, masks))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        embeddings, labels = self._check_batch(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return _PairWeightedSimilarity.apply(embeddings.to(loss_dtype(embeddings)), labels, self)

    @torch.no_grad()
    def pair_weights(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(w_pos, w_neg), both (m, m), >= 0, zero off the selection, with dL/dS = w_neg - w_pos."""
        embeddings, labels = self._check_batch(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = embeddings.to(loss_dtype(embeddings))
            out = self.weigh(emb @ emb.T, labels)
        return out.w_pos, out.w_neg

    @staticmethod
    def _check_batch(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if embeddings.dim() != 2 or not embeddings.is_floating_point():
            raise ValueError(
                f"embeddings must be a floating (m, d) tensor, got {embeddings.dtype} "
                f"{tuple(embeddings.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if embeddings.shape[0] == 0:
            raise ValueError("the batch is empty: embeddings has 0 rows")
        return embeddings, labels.to(embeddings.device)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, miner={self.miner!r}, weighting={self.weighting!r}"
