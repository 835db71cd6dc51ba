"""Pair weightings: the loss value over the selected pairs and its closed-form pair weights (GPW, Eq. 3).

A weighting maps (S, selected pairs) to a :class:`Weighted`: the scalar loss (differentiable in S
when S requires grad) and the weights ``w_pos``, ``w_neg`` written from the paper's equations, such
that ``dL/dS = w_neg - w_pos``. The tests check that identity against autograd.

Normalisation, the same for every weighting: the batch loss is the mean over the m anchors of the
per-anchor terms (1/m), as Eq. 15-16 write it; Eq. 4-6 and 9, written per pair or as a plain sum,
get the same 1/m. Weights therefore include the factor 1/m. Empty sums are 0, never -inf or NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.pairs import PairMasks, row_counts

_INF = float("inf")


class Weighted(NamedTuple):
    """A weighting's output: scalar loss, closed-form (m, m) weights, and the pairs that carry weight."""

    loss: Tensor
    w_pos: Tensor
    w_neg: Tensor
    selected: PairMasks


class Weighting(Protocol):
    """Weights the selected pairs; returns the loss and its closed-form dL/dS."""

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted: ...


def underflow_cutoff(dtype: torch.dtype) -> float:
    """The exponent below which e^x is flushed to 0: e^-cutoff is 2^40 above the smallest normal number."""
    return -math.log(torch.finfo(dtype).tiny) - 40 * math.log(2)


def exp_flushed_(x: Tensor) -> Tensor:
    """In-place e^x, with e^x := 0 exactly where x < -underflow_cutoff (about -59.6 in float32,
    -680 in float64).

    Subnormal results make exp, the products after it and the backward matmul many times slower on
    x86 CPUs; the terms dropped are below 1e-26 of the row's largest term (float32), far under rounding.
    """
    return torch.threshold_(x, -underflow_cutoff(x.dtype), -_INF).exp_()


def masked_log_sum_exp(
    sim: Tensor, mask: Tensor, scale: float, bias: float, add_one: bool, row_scale: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Row-wise ``log(sum_{mask} e^x)`` of ``x = scale * S + bias`` (``log(1 + sum ...)`` with ``add_one``).

    Returns the (m,) log-sums and the detached closed-form weights ``row_scale * e^{x_ij} / Z_i``,
    ``Z_i = [1 +] sum_{k in mask} e^{x_ik}``: the derivative of the log-sum with respect to x.
    Stable (shifted by the row maximum); a row with an empty mask gives 0 and zero weights (without
    ``add_one`` the log of the empty sum is *defined* as 0). Works in place on one m x m buffer.
    """
    logits = torch.where(mask, sim, -_INF if scale > 0 else _INF).mul_(scale)
    with torch.no_grad():
        shift = logits.amax(dim=1, keepdim=True).add_(bias)
        shift = shift.clamp_(min=0.0) if add_one else shift.masked_fill_(shift == -_INF, 0.0)
    exps = exp_flushed_(logits.sub_(shift - bias))
    total = exps.sum(dim=1, keepdim=True)
    if add_one:
        total = total + torch.exp(-shift)
    total = torch.where(total > 0, total, 1.0)
    lse = (shift + torch.log(total)).squeeze(1)
    factor = row_scale / total.detach()
    weights = exps.detach() * factor if exps.requires_grad else exps.mul_(factor)
    return lse, weights


class MultiSimilarityWeighting:
    """MS weighting, Eq. 13-14 (Similarity-S and -N); its loss is Eq. 15 over the selected pairs.

    ``L = 1/m sum_i [ 1/alpha log(1 + sum_{P_i} e^{-alpha (S_ik - lam)})
                     + 1/beta log(1 + sum_{N_i} e^{beta (S_ik - lam)}) ]``;
    ``w+_ij = e^{-alpha(S_ij - lam)} / (1 + sum_{P_i} ...) / m``,
    ``w-_ij = e^{beta(S_ij - lam)} / (1 + sum_{N_i} ...) / m``.
    An empty P_i or N_i contributes log(1 + 0) = 0 (as pytorch-metric-learning does).
    """

    def __init__(self, alpha: float, beta: float, lam: float) -> None:
        self.alpha, self.beta, self.lam = float(alpha), float(beta), float(lam)

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        m = sim.shape[0]
        alpha, beta, lam = self.alpha, self.beta, self.lam
        lse_pos, w_pos = masked_log_sum_exp(sim, sel.pos, -alpha, alpha * lam, add_one=True, row_scale=1 / m)
        lse_neg, w_neg = masked_log_sum_exp(sim, sel.neg, beta, -beta * lam, add_one=True, row_scale=1 / m)
        loss = (lse_pos.sum() / alpha + lse_neg.sum() / beta) / m
        return Weighted(loss, w_pos, w_neg, sel)

    def __repr__(self) -> str:
        return f"MultiSimilarityWeighting(alpha={self.alpha}, beta={self.beta}, lam={self.lam})"


class LiftedStarWeighting:
    """LiftedStruct* weighting, Eq. 16 (Similarity-N): Eq. 7-8 with temperatures alpha and beta.

    ``L = 1/m sum_i [ 1/alpha log sum_{P_i} e^{-alpha S_ik} + 1/beta log sum_{N_i} e^{beta S_ik} ]``;
    ``w+_ij = softmax_{P_i}(-alpha S)_j / m`` (Eq. 7), ``w-_ij = softmax_{N_i}(beta S)_j / m`` (Eq. 8).
    The log of an empty sum (anchor without positives, or without mined pairs) is taken as 0.
    """

    def __init__(self, alpha: float, beta: float) -> None:
        self.alpha, self.beta = float(alpha), float(beta)

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        m = sim.shape[0]
        lse_pos, w_pos = masked_log_sum_exp(sim, sel.pos, -self.alpha, 0.0, add_one=False, row_scale=1 / m)
        lse_neg, w_neg = masked_log_sum_exp(sim, sel.neg, self.beta, 0.0, add_one=False, row_scale=1 / m)
        loss = (lse_pos.sum() / self.alpha + lse_neg.sum() / self.beta) / m
        return Weighted(loss, w_pos, w_neg, sel)

    def __repr__(self) -> str:
        return f"LiftedStarWeighting(alpha={self.alpha}, beta={self.beta})"


class LiftedWeighting:
    """Lifted structure loss, Eq. 6, with its weights Eq. 7-8 on the anchors whose hinge is active.

    ``L = 1/m sum_i [ log sum_{P_i} e^{lam - S_ik} + log sum_{N_i} e^{S_ik} ]_+`` (Eq. 6 sums over
    anchors; we divide by m like every loss here). An anchor with no positive or no negative has a
    log of an empty sum, -inf, so its hinge is 0: it contributes nothing and selects no pairs.
    """

    def __init__(self, lam: float) -> None:
        self.lam = float(lam)

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        m = sim.shape[0]
        lse_pos, w_pos = masked_log_sum_exp(sim, sel.pos, -1.0, self.lam, add_one=False, row_scale=1.0)
        lse_neg, w_neg = masked_log_sum_exp(sim, sel.neg, 1.0, 0.0, add_one=False, row_scale=1.0)
        hinge = lse_pos + lse_neg
        complete = sel.pos.any(dim=1) & sel.neg.any(dim=1)
        active = (complete & (hinge.detach() > 0)).unsqueeze(1)
        loss = torch.where(active.squeeze(1), hinge, 0.0).sum() / m
        scale = active.to(sim.dtype) / m
        selected = PairMasks(sel.pos & active, sel.neg & active)
        return Weighted(loss, w_pos.mul_(scale), w_neg.mul_(scale), selected)

    def __repr__(self) -> str:
        return f"LiftedWeighting(lam={self.lam})"


class BinomialWeighting:
    """Binomial deviance, Eq. 9, with its weights Eq. 10 (Similarity-S).

    ``L = 1/m sum_i [ 1/P_i sum_{P_i} log(1 + e^{alpha(lam - S_ij)})
                     + 1/N_i sum_{N_i} log(1 + e^{beta(S_ij - lam)}) ]``;
    ``w+_ij = alpha sigma(alpha(lam - S_ij)) / P_i / m``, ``w-_ij = beta sigma(beta(S_ij - lam)) / N_i / m``.
    P_i, N_i count the *selected* pairs of anchor i (all pairs without mining); an empty set gives 0.
    """

    def __init__(self, alpha: float, beta: float, lam: float) -> None:
        self.alpha, self.beta, self.lam = float(alpha), float(beta), float(lam)

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        loss_pos, w_pos = self._side(sim, sel.pos, -self.alpha)
        loss_neg, w_neg = self._side(sim, sel.neg, self.beta)
        return Weighted(loss_pos + loss_neg, w_pos, w_neg, sel)

    def _side(self, sim: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """Softplus terms of one side, ``x = scale (S - lam)``, mean per anchor, and their weights.

        With ``e = exp(-|x|)``: ``log(1 + e^x) = relu(x) + log1p(e)`` (finite for any x, derivative
        exactly sigmoid(x)) and ``sigmoid(x) = (1 if x >= 0 else e) / (1 + e)``, from one exp.
        """
        m = sim.shape[0]
        logits = (sim - self.lam) * scale
        small = exp_flushed_(-logits.abs())
        per_anchor = row_counts(mask, sim.dtype).clamp_(min=1.0).mul_(m)
        loss = (torch.where(mask, torch.relu(logits) + torch.log1p(small), 0.0) / per_anchor).sum()
        with torch.no_grad():
            weights = torch.where(logits >= 0, 1.0, small).div_(small + 1.0)
            weights.mul_(mask).mul_(abs(scale)).div_(per_anchor)
        return loss, weights

    def __repr__(self) -> str:
        return f"BinomialWeighting(alpha={self.alpha}, beta={self.beta}, lam={self.lam})"


class EqualWeighting:
    """The selected pairs get equal weights: the contrastive loss (Eq. 4) and MS mining alone.

    Per pair (``per_anchor_mean=False``): ``L = 1/m [ sum_{selected pos} (1 - S_ij) + sum_{selected neg}
    (S_ij - neg_offset) ]``, every weight 1/m. With the contrastive miner and ``neg_offset = lam`` this is
    Eq. 4 (its -S_ij positive term shifted by the constant 1 so that L >= 0, as pytorch-metric-learning's
    pos_margin=1 does).

    Per anchor and side (``per_anchor_mean=True``, MS mining alone): the paper says only that mined pairs
    get "an equal weight"; we give the pairs of P_i the weight 1/(m P_i) and those of N_i 1/(m N_i), i.e.
    ``L = 1/m sum_i [ mean_{P_i} (1 - S_ij) + mean_{N_i} (1 + S_ij) ]`` (``neg_offset = -1``), balanced
    between positives and negatives as Binomial's 1/P_i, 1/N_i are. The per-pair reading lets the ~15x
    more numerous mined negatives swamp the positives: on glyphs it collapsed training (test R@1 2.9%).
    """

    def __init__(self, neg_offset: float, per_anchor_mean: bool = False) -> None:
        self.neg_offset = float(neg_offset)
        self.per_anchor_mean = bool(per_anchor_mean)

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        m = sim.shape[0]
        w_pos = sel.pos.to(sim.dtype).div_(m)
        w_neg = sel.neg.to(sim.dtype).div_(m)
        if self.per_anchor_mean:
            w_pos.div_(row_counts(sel.pos, sim.dtype).clamp_(min=1.0))
            w_neg.div_(row_counts(sel.neg, sim.dtype).clamp_(min=1.0))
        loss = (w_pos * (1.0 - sim)).sum() + (w_neg * (sim - self.neg_offset)).sum()
        return Weighted(loss, w_pos, w_neg, sel)

    def __repr__(self) -> str:
        return f"EqualWeighting(neg_offset={self.neg_offset}, per_anchor_mean={self.per_anchor_mean})"


class TripletWeighting:
    """Triplet loss, Eq. 5, over all (anchor, positive, negative) triplets of the selected pairs.

    ``L = 1/m sum_a sum_{p in P_a} sum_{n in N_a} [S_an - S_ap + lam]_+``. A triplet is active when
    ``S_an + lam > S_ap``; every active triplet weights its two pairs equally, so
    ``w-_an = #{p : S_ap < S_an + lam} / m`` and ``w+_ap = #{n : S_an > S_ap - lam} / m``. The pairs
    with a non-zero count are the selected ones (the triplet hinge is a miner over triplets). Counts
    and the value use sorted rows and binary search: O(m^2 log m), no m^3 tensor.
    """

    def __init__(self, lam: float) -> None:
        self.lam = float(lam)

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        m = sim.shape[0]
        most_pos = int(sel.pos.sum(dim=1).max()) if m else 0
        if most_pos == 0 or not bool(sel.neg.any()):
            zeros = torch.zeros_like(sim, dtype=sim.dtype).detach()
            none = PairMasks(torch.zeros_like(sel.pos), torch.zeros_like(sel.neg))
            return Weighted(sim.sum() * 0.0, zeros, zeros.clone(), none)
        # Positives of each anchor in ascending order, padded with +inf; prefix sums for the value.
        pos_sorted = torch.where(sel.pos, sim, _INF).topk(most_pos, dim=1, largest=False, sorted=True).values
        pos_prefix = F.pad(torch.where(torch.isinf(pos_sorted), 0.0, pos_sorted).cumsum(dim=1), (1, 0))
        upper = sim + self.lam
        pos_per_neg = torch.searchsorted(pos_sorted.detach().contiguous(), upper.detach().contiguous())
        pos_per_neg.mul_(sel.neg)
        per_neg = pos_per_neg * upper - pos_prefix.gather(1, pos_per_neg)
        loss = torch.where(sel.neg, per_neg, 0.0).sum() / m
        # Negatives of each anchor in ascending order (-inf padding first): count those above S_ap - lam.
        neg_sorted = torch.where(sel.neg, sim.detach(), -_INF).sort(dim=1).values
        below = torch.searchsorted(neg_sorted, (sim.detach() - self.lam).contiguous(), right=True)
        neg_per_pos = (m - below).mul_(sel.pos)
        selected = PairMasks(neg_per_pos > 0, pos_per_neg > 0)
        return Weighted(loss, neg_per_pos.to(sim.dtype).div_(m), pos_per_neg.to(sim.dtype).div_(m), selected)

    def __repr__(self) -> str:
        return f"TripletWeighting(lam={self.lam})"


class AverageWeighting:
    """The average of two weightings: ``L = (L_a + L_b) / 2``, so ``w = (w_a + w_b) / 2`` (BinLifted)."""

    def __init__(self, first: Weighting, second: Weighting) -> None:
        self.first, self.second = first, second

    def __call__(self, sim: Tensor, sel: PairMasks) -> Weighted:
        a, b = self.first(sim, sel), self.second(sim, sel)
        selected = PairMasks(a.selected.pos | b.selected.pos, a.selected.neg | b.selected.neg)
        return Weighted(
            (a.loss + b.loss) / 2, a.w_pos.add_(b.w_pos).div_(2), a.w_neg.add_(b.w_neg).div_(2), selected
        )

    def __repr__(self) -> str:
        return f"AverageWeighting({self.first!r}, {self.second!r})"
