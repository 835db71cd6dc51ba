"""GPW made executable: for every registered loss, autograd's dL/dS equals w_neg - w_pos (Eq. 3), and
those weights are the paper's printed weight formulas (Eq. 7-8, 10, 13-14) with the loss's 1/m."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_strategies import NAMES, batches, hparams

import losses
from losses.reference import reference_weights


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_autograd_gradient_wrt_similarity_is_the_closed_form_weights(name: str, data: st.DataObject) -> None:
    batch, hp = data.draw(batches()), data.draw(hparams(name))
    loss = losses.build(name, **hp)
    sim = (batch.embeddings @ batch.embeddings.T).requires_grad_()
    out = loss.weigh(sim, batch.labels)
    (grad,) = torch.autograd.grad(out.loss, sim, allow_unused=True)
    grad = torch.zeros_like(sim) if grad is None else grad
    torch.testing.assert_close(grad, out.w_neg - out.w_pos, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_pair_weights_are_the_papers_weight_equations(name: str, data: st.DataObject) -> None:
    batch, hp = data.draw(batches()), data.draw(hparams(name))
    loss = losses.build(name, **hp)
    w_pos, w_neg = loss.pair_weights(batch.embeddings, batch.labels)
    ref_pos, ref_neg = reference_weights(name, batch.embeddings, batch.labels, loss.hparams)
    torch.testing.assert_close(w_pos, ref_pos, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w_neg, ref_neg, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_pair_weights_contract_and_last_stats(name: str, data: st.DataObject) -> None:
    batch, hp = data.draw(batches()), data.draw(hparams(name))
    loss = losses.build(name, **hp)
    w_pos, w_neg = loss.pair_weights(batch.embeddings, batch.labels)
    same = batch.labels[:, None] == batch.labels[None, :]
    assert (w_pos >= 0).all() and (w_neg >= 0).all()
    assert not w_pos[~same].any() and not w_pos.diagonal().any(), "positive weight off the positive pairs"
    assert not w_neg[same].any(), "negative weight off the negative pairs"
    loss(batch.embeddings, batch.labels)
    stats = loss.last_stats
    assert set(stats) == {"pos_pairs", "neg_pairs", "pos_weight_mean", "neg_weight_mean"}
    assert all(type(value) is float for value in stats.values())
    # In float64 every selected pair carries a strictly positive weight, so counts and means follow.
    for side, weights in (("pos", w_pos), ("neg", w_neg)):
        count = int(torch.count_nonzero(weights))
        assert stats[f"{side}_pairs"] == count
        expected_mean = float(weights.sum()) / count if count else 0.0
        assert stats[f"{side}_weight_mean"] == pytest.approx(expected_mean, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_the_gradient_of_the_module(name: str) -> None:
    """The module's backward is built from the weights: dL/dE = (W + W^T) E with W = w_neg - w_pos."""
    gen = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(30, 6, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 6, (30,), generator=gen)
    loss = losses.build(name)
    w_pos, w_neg = loss.pair_weights(emb, labels)
    leaf = emb.clone().requires_grad_()
    loss(leaf, labels).backward()
    signed = w_neg - w_pos
    torch.testing.assert_close(leaf.grad, (signed + signed.T) @ emb, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_the_backward_scales_with_the_upstream_gradient(name: str) -> None:
    """The custom backward multiplies by dOut/dL: 3 * loss (and a loss inside a sum) gets 3 times the
    gradient."""
    gen = torch.Generator().manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(24, 6, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (24,), generator=gen)
    loss = losses.build(name)
    grads = []
    for scale in (1.0, 3.0, -0.5):
        leaf = emb.clone().requires_grad_()
        (scale * loss(leaf, labels)).backward()
        grads.append(leaf.grad)
    assert grads[0].abs().sum() > 0, "a zero gradient would make the check vacuous"
    torch.testing.assert_close(grads[1], 3.0 * grads[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grads[2], -0.5 * grads[0], rtol=1e-12, atol=1e-15)
