"""Every vectorised loss equals its slow per-anchor reference (losses/reference.py) in value and gradient."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_strategies import NAMES, Batch, batches, hparams, pk_batch, value_and_grad

import losses
from losses.reference import reference_loss


def assert_matches_reference(name: str, batch: Batch, hp: dict[str, Any], tol: float) -> None:
    loss = losses.build(name, **hp)
    value, grad = value_and_grad(loss, batch.embeddings, batch.labels)
    leaf = batch.embeddings.detach().clone().requires_grad_()
    ref_value = reference_loss(name, leaf, batch.labels, loss.hparams)
    (ref_grad,) = torch.autograd.grad(ref_value, leaf)
    assert value.dtype == batch.embeddings.dtype
    torch.testing.assert_close(value, ref_value.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_float64_equals_reference(name: str, data: st.DataObject) -> None:
    assert_matches_reference(name, data.draw(batches()), data.draw(hparams(name)), tol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_float64_equals_reference_heavy(name: str, data: st.DataObject) -> None:
    batch = data.draw(batches(max_classes=12, max_per_class=8, max_dim=64))
    assert_matches_reference(name, batch, data.draw(hparams(name)), tol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_equals_reference(name: str, seed: int) -> None:
    """A P x K batch like the paper's (m = 60, 12 classes x 5, d = 32) in float32, both presets."""
    for preset in ("paper", "official"):
        assert_matches_reference(name, pk_batch(12, 5, 32, seed, torch.float32), {"preset": preset}, tol=2e-5)
