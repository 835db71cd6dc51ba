"""Edge cases with a defined, documented, finite result, and numerical stability (autocast, S near +-1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_strategies import MINED, NAMES, build_with, make_batch, pk_batch, value_and_grad

import losses
from losses.miners import MultiSimilarityMiner
from losses.pairs import label_masks
from losses.reference import reference_loss

# Losses that are exactly 0 (zero gradient) when the batch has no negative pair, or no positive pair:
# MS mining needs both sides, the lifted hinge needs both log-sums, and a triplet needs both pairs.
ZERO_WITHOUT_NEGATIVES = [*MINED, "lifted", "triplet"]
ZERO_WITHOUT_POSITIVES = [*MINED, "lifted", "triplet"]


def assert_finite_and_matches_reference(
    name: str, emb: torch.Tensor, labels: torch.Tensor, **hp: object
) -> None:
    loss = losses.build(name, **hp)
    value, grad = value_and_grad(loss, emb, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    leaf = emb.detach().clone().requires_grad_()
    ref = reference_loss(name, leaf, labels, loss.hparams)
    (ref_grad,) = torch.autograd.grad(ref, leaf)
    torch.testing.assert_close(value, ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_singleton_class_anchor_is_finite_and_selects_nothing_under_ms_mining(name: str) -> None:
    batch = make_batch([3, 1, 4, 1], [10, 20, 30, 40], dim=8, seed=1)
    assert_finite_and_matches_reference(name, batch.embeddings, batch.labels)
    if name in MINED:
        w_pos, w_neg = losses.build(name).pair_weights(batch.embeddings, batch.labels)
        singletons = (batch.labels == 20) | (batch.labels == 40)
        assert not w_neg[singletons].any() and not w_pos[singletons].any()


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one_class(name: str) -> None:
    batch = make_batch([6], [3], dim=8, seed=2)
    assert_finite_and_matches_reference(name, batch.embeddings, batch.labels)
    if name in ZERO_WITHOUT_NEGATIVES:
        loss = losses.build(name)
        value, grad = value_and_grad(loss, batch.embeddings, batch.labels)
        assert value.item() == 0.0 and not grad.any()
        assert loss.last_stats == {
            "pos_pairs": 0.0,
            "neg_pairs": 0.0,
            "pos_weight_mean": 0.0,
            "neg_weight_mean": 0.0,
        }


@pytest.mark.parametrize("name", NAMES)
def test_all_singleton_batch(name: str) -> None:
    batch = make_batch([1] * 7, list(range(7)), dim=8, seed=3)
    assert_finite_and_matches_reference(name, batch.embeddings, batch.labels)
    if name in ZERO_WITHOUT_POSITIVES:
        value, grad = value_and_grad(losses.build(name), batch.embeddings, batch.labels)
        assert value.item() == 0.0 and not grad.any()


@pytest.mark.parametrize("name", MINED)
def test_well_separated_classes_mine_nothing(name: str) -> None:
    """Positives near 1, negatives near 0: no pair violates Eq. 11-12, so the loss is 0 with zero gradient."""
    gen = torch.Generator().manual_seed(4)
    centres = torch.eye(4, 16, dtype=torch.float64)
    emb = F.normalize(centres.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 16, generator=gen), dim=1)
    labels = torch.arange(4).repeat_interleave(5)
    loss = losses.build(name)
    value, grad = value_and_grad(loss, emb, labels)
    assert value.item() == 0.0 and not grad.any()
    assert loss.last_stats["pos_pairs"] == 0.0 and loss.last_stats["neg_pairs"] == 0.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_identical_embeddings(name: str, preset: str) -> None:
    emb = F.normalize(torch.ones(8, 5, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert_finite_and_matches_reference(name, emb, labels, preset=preset)


@pytest.mark.parametrize("name", NAMES)
def test_duplicated_images_stay_pairs(name: str) -> None:
    """Self-pairs are excluded by index: a duplicated image (S = 1, i != j) is an ordinary positive pair."""
    batch = pk_batch(3, 3, 6, seed=5)
    emb = batch.embeddings.clone()
    emb[1] = emb[0]
    labels = batch.labels.clone()
    labels[1] = labels[0]
    assert_finite_and_matches_reference(name, emb, labels)
    if name in (
        "ms_weighting",
        "binomial",
        "lifted_star",
        "binlifted",
        "contrastive",
    ):  # all positives weighted
        w_pos, _ = losses.build(name).pair_weights(emb, labels)
        assert w_pos[0, 1] > 0 and w_pos[1, 0] > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_finite_and_computed_in_float32(name: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    layer = torch.nn.Linear(32, 16)
    inputs = torch.randn(40, 32, generator=gen)
    labels = torch.arange(8).repeat_interleave(5)
    loss = build_with(name, beta=50.0)
    with torch.autocast("cpu", dtype=dtype):
        emb = F.normalize(layer(inputs), dim=1)
        value = loss(emb, labels)
    value.backward()
    assert emb.dtype == dtype and value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(layer.weight.grad).all()
    assert value.item() == pytest.approx(loss(emb.detach().float(), labels).item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_similarities_near_plus_and_minus_one(name: str, dtype: torch.dtype) -> None:
    """Positives almost identical, negatives antipodal or almost identical, large beta: finite everywhere."""
    gen = torch.Generator().manual_seed(8)
    base = F.normalize(torch.randn(2, 16, generator=gen), dim=1)
    rows = [base[0], base[0] + 1e-4, -base[0], -base[0] + 1e-4, base[0] + 2e-4, base[1]]
    emb = F.normalize(torch.stack(rows), dim=1).to(dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    value, grad = value_and_grad(build_with(name, beta=200.0, lam=0.0), emb, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ms_mining_empties_both_sides_of_an_anchor_or_neither(eps: float) -> None:
    """Why there is no switch for the official code's skipping of anchors with one empty mined side.

    Both selection rules test hardest negative > hardest positive - eps, so an anchor mines positives
    exactly when it mines negatives: skipping anchors with an empty side would change nothing.
    """
    empty = mined = 0
    for seed in range(150):
        batch = make_batch([4, 3, 1, 2], [0, 1, 2, 3], dim=3 + seed % 6, seed=seed)
        sim = batch.embeddings @ batch.embeddings.T
        masks = label_masks(batch.labels)
        selected = MultiSimilarityMiner(eps)(sim, masks)
        has_pos, has_neg = selected.pos.any(dim=1), selected.neg.any(dim=1)
        assert torch.equal(has_pos, has_neg), f"seed {seed}: one mined side empty, the other not"
        has_pairs = masks.pos.any(dim=1)  # not a singleton: the empty case is the miner's doing
        empty += int((has_pairs & ~has_pos).sum())
        mined += int(has_pos.sum())
    assert empty > 5 and mined > 1000  # both kinds of anchor occur


def test_only_embeddings_and_the_weight_matrix_are_kept_for_backward() -> None:
    """The custom backward keeps E (m x d) and W (m x m), none of the m x m intermediates autograd would."""
    m, d = 50, 8
    emb = F.normalize(torch.randn(m, d), dim=1).requires_grad_()
    labels = torch.arange(10).repeat_interleave(5)
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = losses.build("ms")(emb, labels)
    value.backward()
    assert sorted(saved) == [(m, d), (m, m)]


@pytest.mark.parametrize(
    ("emb", "labels", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "floating"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "labels must have shape"),
        (torch.zeros(4, 3), torch.zeros(4), "integers"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_bad_batches_raise_value_error(emb: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        losses.build("ms")(emb, labels)
