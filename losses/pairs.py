"""Pair masks of a batch: which entries of S = E E^T are positive or negative pairs, by index.

A pair (i, j) is *positive* when ``labels[i] == labels[j]`` and ``i != j``; *negative* when the labels
differ. Self-pairs are excluded by index, never by value, so duplicated images (S_ij == 1 with
i != j) stay ordinary positive (or negative) pairs. Labels may be any integers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PairMasks(NamedTuple):
    """Boolean (m, m) masks over S: row i holds the pairs of anchor i."""

    pos: Tensor
    neg: Tensor


def label_masks(labels: Tensor) -> PairMasks:
    """Positive and negative pair masks of a batch from its integer labels (shape (m,))."""
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (m,), got {tuple(labels.shape)}")
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    neg = ~same
    same.fill_diagonal_(False)
    return PairMasks(pos=same, neg=neg)


def row_counts(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Number of selected pairs of each anchor, as a (m, 1) column of ``dtype``."""
    return mask.sum(dim=1, keepdim=True, dtype=dtype)
