"""Agreement with pytorch-metric-learning (PML, a test-only dependency) where the definitions coincide.

- ``ms`` = PML ``MultiSimilarityLoss(alpha, beta, base=lam)`` on ``MultiSimilarityMiner(epsilon=eps)``.
- ``contrastive`` = PML ``ContrastiveLoss(pos_margin=1, neg_margin=lam)`` with ``CosineSimilarity`` and
  ``SumReducer``, divided by m (PML's default reducer averages over non-zero pairs instead).
- ``triplet`` = PML ``TripletMarginLoss(margin=lam, triplets_per_anchor="all")`` with ``CosineSimilarity``
  and ``SumReducer``, divided by m.
PML normalises embeddings itself, so gradients are compared with respect to the raw (un-normalised)
vectors, through the same normalisation on both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from loss_strategies import Batch, batches, hparams, pk_batch
from pytorch_metric_learning import distances, miners, reducers
from pytorch_metric_learning import losses as pml_losses
from torch import Tensor

import losses
from losses.reference import reference_loss

LossFn = Callable[[Tensor, Tensor], Tensor]


def raw_value_and_grad(fn: LossFn, batch: Batch) -> tuple[Tensor, Tensor]:
    raw = (batch.embeddings * 1.7).detach().requires_grad_()
    value = fn(F.normalize(raw, dim=1), batch.labels)
    (grad,) = torch.autograd.grad(value, raw, allow_unused=True)
    return value.detach(), torch.zeros_like(raw) if grad is None else grad


def pml_ms(alpha: float, beta: float, lam: float, eps: float) -> LossFn:
    loss = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=lam)
    miner = miners.MultiSimilarityMiner(epsilon=eps)
    return lambda emb, labels: loss(emb, labels, miner(emb, labels))


def pair_counts(labels: Tensor) -> tuple[int, int]:
    same = labels[:, None] == labels[None, :]
    return int(same.sum()) - labels.numel(), int((~same).sum())


@settings(max_examples=30, deadline=None)
@given(batch=batches(), hp=hparams("ms"))
def test_ms_equals_pml_loss_and_miner(batch: Batch, hp: dict) -> None:
    ours = losses.build("ms", **hp)
    value, grad = raw_value_and_grad(ours, batch)
    # PML returns 0 when at most one positive and one negative pair are mined: a PML shortcut, not Eq. 15.
    assume(ours.last_stats["pos_pairs"] > 1 or ours.last_stats["neg_pairs"] > 1)
    h = ours.hparams
    pml_value, pml_grad = raw_value_and_grad(pml_ms(h["alpha"], h["beta"], h["lam"], h["eps"]), batch)
    torch.testing.assert_close(value, pml_value, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, pml_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_ms_pml_and_reference_agree_at_paper_scale_float32(preset: str) -> None:
    """m = 80 (16 x 5), d = 512, float32: the three implementations agree to float32 rounding."""
    batch = pk_batch(16, 5, 512, seed=7, dtype=torch.float32)
    ours = losses.build("ms", preset=preset)
    h = ours.hparams
    value = ours(batch.embeddings, batch.labels)
    pml_value = pml_ms(h["alpha"], h["beta"], h["lam"], h["eps"])(batch.embeddings, batch.labels)
    ref_value = reference_loss("ms", batch.embeddings, batch.labels, h)
    assert value.item() == pytest.approx(pml_value.item(), rel=1e-5)
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-5)


@settings(max_examples=20, deadline=None)
@given(batch=batches(), lam=st.floats(-0.5, 0.9))
def test_contrastive_equals_pml_with_sum_reducer(batch: Batch, lam: float) -> None:
    assume(max(pair_counts(batch.labels)) > 1)  # PML returns 0 when it has at most one pair of each kind
    value, grad = raw_value_and_grad(losses.build("contrastive", lam=lam), batch)
    pml = pml_losses.ContrastiveLoss(
        pos_margin=1, neg_margin=lam, distance=distances.CosineSimilarity(), reducer=reducers.SumReducer()
    )
    m = batch.labels.numel()
    pml_value, pml_grad = raw_value_and_grad(lambda emb, labels: pml(emb, labels) / m, batch)
    torch.testing.assert_close(value, pml_value, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, pml_grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(batch=batches(), lam=st.floats(0.0, 0.5))
def test_triplet_equals_pml_all_triplets_with_sum_reducer(batch: Batch, lam: float) -> None:
    value, grad = raw_value_and_grad(losses.build("triplet", lam=lam), batch)
    pml = pml_losses.TripletMarginLoss(
        margin=lam,
        triplets_per_anchor="all",
        distance=distances.CosineSimilarity(),
        reducer=reducers.SumReducer(),
    )
    m = batch.labels.numel()
    pml_value, pml_grad = raw_value_and_grad(lambda emb, labels: pml(emb, labels) / m, batch)
    torch.testing.assert_close(value, pml_value, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, pml_grad, rtol=1e-9, atol=1e-12)
