"""Miners: which pairs of the similarity matrix S count (the selection half of General Pair Weighting).

A miner maps (S, label masks) to the selected positive and negative pairs. Selections are piecewise
constant in S, so they carry no gradient: dL/dS is the pair weighting's weight on the selected pairs
and zero elsewhere (GPW, Eq. 3).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from losses.pairs import PairMasks

_INF = float("inf")


class Miner(Protocol):
    """Selects pairs: returns masks that are subsets of the label masks."""

    def __call__(self, sim: Tensor, masks: PairMasks) -> PairMasks: ...


class AllPairs:
    """No mining: every positive and every negative pair of the batch is selected."""

    def __call__(self, sim: Tensor, masks: PairMasks) -> PairMasks:
        return masks

    def __repr__(self) -> str:
        return "AllPairs()"


class MultiSimilarityMiner:
    """MS mining, Eq. 11-12 (Similarity-P): keep the pairs that violate the hardest opposite pair by eps.

    For anchor i, negative j is selected when ``S_ij > min_{k in P(i)} S_ik - eps`` and positive j when
    ``S_ij < max_{k in N(i)} S_ik + eps``. Eq. 11 as printed takes the minimum over y_k != y_i; the
    text (and the official code) compare a negative with the *hardest positive*, which is what this
    does. An anchor without positives selects no negatives, one without negatives no positives.

    Both rules test the same inequality, hardest negative > hardest positive - eps, so an anchor's
    mined positive set is empty exactly when its mined negative set is (in floating point, up to a
    rounding of that one comparison). The official code's skipping of anchors with an empty mined
    side therefore needs no switch here: those anchors select nothing on either side already.
    """

    def __init__(self, eps: float) -> None:
        self.eps = float(eps)

    def thresholds(self, sim: Tensor, masks: PairMasks) -> tuple[Tensor, Tensor]:
        """Per-anchor (m, 1) hardest positive (min S, +inf if none) and hardest negative (max S,
        -inf if none)."""
        hardest_pos = torch.where(masks.pos, sim, _INF).amin(dim=1, keepdim=True)
        hardest_neg = torch.where(masks.neg, sim, -_INF).amax(dim=1, keepdim=True)
        return hardest_pos, hardest_neg

    def __call__(self, sim: Tensor, masks: PairMasks) -> PairMasks:
        sim = sim.detach()
        hardest_pos, hardest_neg = self.thresholds(sim, masks)
        neg = torch.gt(sim, hardest_pos - self.eps).logical_and_(masks.neg)
        pos = torch.lt(sim, hardest_neg + self.eps).logical_and_(masks.pos)
        return PairMasks(pos=pos, neg=neg)

    def __repr__(self) -> str:
        return f"MultiSimilarityMiner(eps={self.eps})"


class ContrastiveMiner:
    """The hinge selection of the contrastive loss, Eq. 4: every positive, and negatives with S_ij > lam."""

    def __init__(self, lam: float) -> None:
        self.lam = float(lam)

    def __call__(self, sim: Tensor, masks: PairMasks) -> PairMasks:
        neg = torch.gt(sim.detach(), self.lam).logical_and_(masks.neg)
        return PairMasks(pos=masks.pos, neg=neg)

    def __repr__(self) -> str:
        return f"ContrastiveMiner(lam={self.lam})"
