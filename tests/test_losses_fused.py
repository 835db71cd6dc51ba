"""The fused MS forward (losses/fused.py) equals the generic miner + weighting path: loss, dL/dS, stats."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_strategies import batches, hparams, pk_batch

import losses
from losses.fused import positive_columns
from losses.gpw import generic_forward

FUSED = [name for name in losses.available() if losses.build(name).kernel is not None]


def test_ms_and_ms_weighting_have_the_fused_forward() -> None:
    assert FUSED == ["ms", "ms_weighting"]


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_positive_columns_list_exactly_the_positive_pairs(labels: list[int]) -> None:
    tensor = torch.tensor(labels)
    index, valid = positive_columns(tensor)
    dense = torch.zeros(len(labels), len(labels), dtype=torch.bool)
    dense.scatter_(1, index, valid)  # invalid slots point at the diagonal and scatter False there
    expected = tensor[:, None] == tensor[None, :]
    expected.fill_diagonal_(False)
    assert torch.equal(dense, expected)
    assert int(valid.sum()) == int(expected.sum())


@pytest.mark.parametrize("name", FUSED)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_fused_forward_equals_generic_path(name: str, data: st.DataObject) -> None:
    batch, hp = data.draw(batches()), data.draw(hparams(name))
    loss = losses.build(name, **hp)
    sim = batch.embeddings @ batch.embeddings.T
    fused, generic = loss.kernel(sim.clone(), batch.labels), generic_forward(loss, sim.clone(), batch.labels)
    torch.testing.assert_close(fused.loss, generic.loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fused.grad_sim, generic.grad_sim, rtol=1e-12, atol=1e-15)
    assert fused.stats == pytest.approx(generic.stats, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_fused_forward_equals_generic_path_float32(name: str, preset: str) -> None:
    batch = pk_batch(40, 5, 64, seed=3, dtype=torch.float32)
    loss = losses.build(name, preset=preset)
    sim = batch.embeddings @ batch.embeddings.T
    fused, generic = loss.kernel(sim.clone(), batch.labels), generic_forward(loss, sim.clone(), batch.labels)
    torch.testing.assert_close(fused.loss, generic.loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused.grad_sim, generic.grad_sim, rtol=1e-5, atol=1e-9)
    assert fused.stats == pytest.approx(generic.stats, rel=1e-5)
