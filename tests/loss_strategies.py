"""Shared helpers for the loss tests: random batches and hyperparameters as hypothesis strategies."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import losses

NAMES = losses.available()
MINED = ["ms", "ms_mining", "binomial_m", "lifted_star_m"]  # the losses that use MS mining (Eq. 11-12)
# Ranges of the hyperparameters a test may set; lam depends on what the loss uses it for.
RANGES = {"alpha": (0.5, 8.0), "beta": (1.0, 80.0), "lam": (-0.5, 1.0), "eps": (0.0, 0.5)}
LAM_RANGES = {"contrastive": (-0.5, 0.9), "triplet": (0.0, 0.5), "lifted": (0.0, 2.0)}


class Batch(NamedTuple):
    """L2-normalised embeddings (m, d) and integer labels (m,)."""

    embeddings: Tensor
    labels: Tensor


def make_batch(
    class_sizes: list[int], label_values: list[int], dim: int, seed: int, dtype: torch.dtype = torch.float64
) -> Batch:
    """A shuffled batch with ``class_sizes[c]`` samples of label ``label_values[c]`` and random unit
    embeddings."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(
        [value for value, size in zip(label_values, class_sizes, strict=True) for _ in range(size)]
    )
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    raw = torch.randn(labels.numel(), dim, generator=gen, dtype=torch.float64)
    return Batch(F.normalize(raw, dim=1).to(dtype), labels)


def pk_batch(classes: int, per_class: int, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> Batch:
    """A P x K batch (``classes`` classes of ``per_class`` samples), labels 0..classes-1."""
    return make_batch([per_class] * classes, list(range(classes)), dim, seed, dtype)


@st.composite
def batches(draw: st.DrawFn, max_classes: int = 6, max_per_class: int = 5, max_dim: int = 16) -> Batch:
    """Batches of 1..max_classes classes with 1..max_per_class samples each (singletons included),
    arbitrary (negative, non-contiguous) integer labels and embedding sizes 2..max_dim."""
    n_classes = draw(st.integers(1, max_classes))
    sizes = draw(st.lists(st.integers(1, max_per_class), min_size=n_classes, max_size=n_classes))
    values = draw(st.lists(st.integers(-(10**6), 10**6), min_size=n_classes, max_size=n_classes, unique=True))
    dim = draw(st.integers(2, max_dim))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_batch(sizes, values, dim, seed)


@st.composite
def hparams(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A preset plus a random subset of the hyperparameters ``name`` accepts, each within its range."""
    names = accepted(name)
    chosen: dict[str, Any] = {"preset": draw(st.sampled_from(["paper", "official"]))}
    for key, (low, high) in RANGES.items():
        if key in names and draw(st.booleans()):
            low, high = LAM_RANGES.get(name, (low, high)) if key == "lam" else (low, high)
            chosen[key] = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
    return chosen


def accepted(name: str) -> set[str]:
    """The hyperparameter names the loss ``name`` accepts."""
    return set(inspect.signature(losses.info(name).factory).parameters)


def build_with(name: str, **hp: Any) -> losses.GPWLoss:
    """Build ``name`` with those of ``hp`` it accepts (the others do not apply to it)."""
    return losses.build(name, **{key: value for key, value in hp.items() if key in accepted(name)})


def value_and_grad(loss: torch.nn.Module, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The loss value and its gradient with respect to the embeddings (taken as a leaf)."""
    leaf = embeddings.detach().clone().requires_grad_()
    value = loss(leaf, labels)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


@settings(max_examples=20, deadline=None)
@given(batch=batches())
def test_batches_are_unit_rows_with_matching_labels(batch: Batch) -> None:
    assert batch.embeddings.shape[0] == batch.labels.shape[0] >= 1
    torch.testing.assert_close(
        batch.embeddings.norm(dim=1), torch.ones(batch.labels.numel(), dtype=torch.float64)
    )
