"""A fused forward for MS mining + MS weighting (``ms``, ``ms_weighting``): loss,
dL/dS and stats in few passes.

The generic path (miner, then weighting, on dense (m, m) masks) makes about 30 passes over m x m
tensors. This kernel computes the same loss (Eq. 15), the same signed weights W = w_neg - w_pos
(Eq. 13-14) and the same statistics in about 12: positives are few per row (at most the largest
class size), so the positive side works on an (m, k) gather of S; the negative side reuses one
m x m buffer in place, and the known row maxima (the hardest negative, Eq. 12) replace a max pass.
The tests check it against the generic path, which the tests check against the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.gpw import Fused
from losses.weightings import exp_flushed_

_INF = float("inf")


def positive_columns(labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each anchor, the column indices of its positives as an (m, k) table, k the largest class size.

    Returns ``(index, valid)``; slots past the class size and the anchor's own slot are invalid and
    point at the anchor itself (the diagonal), so a scatter of zeros through them changes nothing.
    """
    m = labels.numel()
    rows = torch.arange(m, device=labels.device)
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    width = int(counts.max())
    slots = torch.arange(width, device=labels.device)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    sizes = torch.repeat_interleave(counts, counts)
    index, valid = (
        torch.empty(m, width, dtype=torch.long, device=labels.device),
        torch.empty(m, width, dtype=torch.bool, device=labels.device),
    )
    index[order] = order[(starts[:, None] + slots).clamp_(max=m - 1)]
    valid[order] = slots < sizes[:, None]
    valid &= index != rows[:, None]
    return torch.where(valid, index, rows[:, None]), valid


class FusedMultiSimilarity:
    """Eq. 15 with MS weights (Eq. 13-14), on MS-mined pairs (Eq. 11-12) or, with ``eps=None``, all pairs.

    Same conventions as :class:`losses.miners.MultiSimilarityMiner` and
    :class:`losses.weightings.MultiSimilarityWeighting` (including the
    float32 flush of terms below 1e-26 of a row's largest). Runs without autograd.
    """

    def __init__(self, alpha: float, beta: float, lam: float, eps: float | None) -> None:
        self.alpha, self.beta, self.lam = float(alpha), float(beta), float(lam)
        self.eps = None if eps is None else float(eps)

    @torch.no_grad()
    def __call__(self, sim: Tensor, labels: Tensor) -> Fused:
        m = sim.shape[0]
        alpha, beta, lam = self.alpha, self.beta, self.lam
        pos_index, pos_valid = positive_columns(labels)
        pos_sim = sim.gather(1, pos_index)
        # One m x m buffer: S on the negative pairs, -inf elsewhere (same label, diagonal).
        neg = torch.where(labels[:, None] == labels[None, :], -_INF, sim)
        hardest_neg = neg.amax(dim=1, keepdim=True)
        if self.eps is None:
            keep, pos_sel = neg > -_INF, pos_valid
        else:  # Eq. 11-12: compare with the hardest pair of the other side
            hardest_pos = torch.where(pos_valid, pos_sim, _INF).amin(dim=1, keepdim=True)
            keep = neg > hardest_pos - self.eps
            pos_sel = pos_valid & (pos_sim < hardest_neg + self.eps)
        neg_count = torch.count_nonzero(keep, dim=1).unsqueeze(1).to(sim.dtype)
        # Negative side: x = beta (S - lam) - shift, shift = the largest selected x (the hardest negative,
        # which is selected whenever any negative is), at least 0. Every unselected entry has x <= 0.
        neg_shift = (beta * (hardest_neg - lam)).clamp_(min=0.0)
        torch.add(-(beta * lam + neg_shift), neg, alpha=beta, out=neg)
        exps = exp_flushed_(neg).mul_(keep)
        neg_total = exps.sum(dim=1, keepdim=True)
        neg_norm = neg_total + torch.exp(-neg_shift)  # 1 + sum e^{beta(S - lam)}, scaled by e^-shift
        neg_norm = torch.where(neg_norm > 0, neg_norm, 1.0)
        neg_lse = torch.where(neg_count > 0, neg_shift + torch.log(neg_norm), 0.0)
        neg_factor = 1.0 / (m * neg_norm)
        grad_sim = exps.mul_(neg_factor)
        # Positive side on the (m, k) table: x = -alpha (S - lam), log(1 + sum e^x) shifted by max(0, max x).
        pos_logits = torch.where(pos_sel, -alpha * (pos_sim - lam), -_INF)
        pos_shift = pos_logits.amax(dim=1, keepdim=True).clamp_(min=0.0)
        pos_exps = exp_flushed_(pos_logits - pos_shift)
        pos_total = pos_exps.sum(dim=1, keepdim=True) + torch.exp(-pos_shift)
        pos_lse = pos_shift + torch.log(pos_total)
        pos_weights = pos_exps.mul_(1.0 / (m * pos_total))
        grad_sim.scatter_add_(1, pos_index, -pos_weights)
        loss = (pos_lse / alpha + neg_lse / beta).sum() / m
        sums = torch.stack(
            [
                pos_sel.to(sim.dtype).sum(),
                neg_count.sum(),
                pos_weights.sum(),
                (neg_factor * neg_total).sum(),
            ]
        )
        return Fused(loss, grad_sim, sums)
