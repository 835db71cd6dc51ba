"""harness.evaluate.screen: the bfloat16 screen's error bound holds, is close to tight, and the
screened ranking computes few exact products yet gives the unscreened results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import evaluate as ev
from harness.evaluate import ranking, screen


def _bounds_hold(queries: torch.Tensor, references: torch.Tensor) -> float:
    """Check every entry's exact float32 product against its screened value's bound; return the
    largest ratio of the input rounding's error (before the output's own rounding) to its slack
    (which, taken over the largest reference norms, is nearest for the largest references)."""
    sieve = screen.Screen(queries, references, queries.shape[0] * references.shape[0])
    screened = sieve.product(slice(None), (0, references.shape[0])).double()
    exact = (queries @ references.T).double()
    slack = sieve.slack(torch.arange(queries.shape[0]))[:, None]
    reach = screened.abs() * screen._GROWTH + slack
    assert bool((exact <= screened + reach).all()) and bool((exact >= screened - reach).all())
    unrounded = sieve.queries.double() @ sieve.references.double().T
    return float(((exact - unrounded).abs() / slack).max())


def test_bound_holds_and_is_nearly_reached_when_every_rounding_goes_one_way():
    # every component sits just below a bfloat16 rounding midpoint and rounds down, with the same
    # sign in queries and references (scaled by powers of two): the input errors add up to nearly
    # their Cauchy-Schwarz bound
    dims = 512
    value = np.float32(1 + 0.99 * 2.0**-8)  # bfloat16 keeps 1 (7 fraction bits)
    queries = torch.full((3, dims), float(value)) * torch.tensor([[1.0], [2.0**-3], [4.0]])
    references = torch.full((4, dims), float(value)) * torch.tensor([[1.0], [0.5], [2.0**5], [2.0**-7]])
    assert _bounds_hold(queries, references) >= 0.9  # the slack is nearly reached: not loose


@pytest.mark.parametrize("seed", range(3))
def test_bound_holds_on_random_and_unnormalised_embeddings(seed):
    rng = np.random.default_rng(seed)
    queries = torch.from_numpy(rng.standard_normal((300, 64), dtype=np.float32))
    references = torch.from_numpy(rng.standard_normal((200, 64), dtype=np.float32)) * 1e3
    references[0] = 1e-39  # subnormal components: read as zero by some hardware
    _bounds_hold(queries, references)
    _bounds_hold(queries / queries.norm(dim=1, keepdim=True), references[1:] / 1e3)


def test_limits_and_floors_are_the_bound_read_both_ways():
    rng = np.random.default_rng(4)
    queries = torch.from_numpy(rng.standard_normal((50, 32), dtype=np.float32))
    references = torch.from_numpy(rng.standard_normal((80, 32), dtype=np.float32))
    sieve = screen.Screen(queries, references, 50 * 80)
    block = sieve.product(slice(None), (0, 80))
    exact = queries @ references.T
    every = torch.arange(50)
    threshold = exact.amax(dim=1)  # each row's largest exact entry reaches its threshold
    assert bool((block.amax(dim=1) >= sieve.limits(every, threshold)).all())
    assert sieve.may_reach(block, sieve.limits(every, threshold)).tolist() == every.tolist()
    assert len(sieve.may_reach(block, sieve.limits(every, threshold + 1.0))) == 0
    ranks = torch.tensor([0, 1, 2, 5, 80, 81] * 8 + [3, 3])
    floors = sieve.floors(block, every, ranks)
    kth = torch.sort(exact, dim=1, descending=True).values
    for row, rank in enumerate(ranks.tolist()):
        if 1 <= rank <= 80:
            assert float(floors[row]) <= float(kth[row, rank - 1])
        else:
            assert floors[row] == -torch.inf


def test_auto_mode_follows_the_hardware_and_the_dtype(monkeypatch):
    floats = torch.zeros(2, 2)
    monkeypatch.setattr(screen, "native_bfloat16", lambda device: True)
    assert screen.wanted(floats, leave_one_out=False)
    assert not screen.wanted(floats, leave_one_out=True)  # leave-one-out: the symmetric sweep
    assert not screen.wanted(floats.double(), leave_one_out=False)
    monkeypatch.setattr(screen, "native_bfloat16", lambda device: False)
    assert not screen.wanted(floats, leave_one_out=False)
    monkeypatch.setattr(screen, "MODE", "always")
    assert screen.wanted(floats, leave_one_out=False)
    monkeypatch.setattr(screen, "MODE", "never")
    assert not screen.wanted(floats, leave_one_out=False)


def test_screened_ranking_computes_few_exact_products_and_changes_no_result(monkeypatch):
    # trained-like data: classes around a few directions, query -> gallery, as In-Shop
    rng = np.random.default_rng(11)
    classes, dims = 150, 64
    centres = rng.standard_normal((4, dims))[rng.integers(0, 4, classes)] + 1.2 * rng.standard_normal(
        (classes, dims)
    )
    labels, gallery_labels = rng.integers(0, classes, 900), rng.integers(0, classes, 800)
    noise = 0.25
    problem = {
        "embeddings": (centres[labels] + noise * rng.standard_normal((900, dims))).astype(np.float32),
        "labels": labels,
        "gallery": (centres[gallery_labels] + noise * rng.standard_normal((800, dims))).astype(np.float32),
        "gallery_labels": gallery_labels,
    }
    ks = (1, 5, 20)
    monkeypatch.setattr(screen, "MODE", "never")
    want = ev.evaluate(**problem, ks=ks, block_size=256)
    want_ranks = ev.first_correct_rank(**problem, block_size=256)
    exact = []
    product, pairs = ranking._product, ranking._pair_products
    monkeypatch.setattr(ranking, "_product", lambda *a: exact.append(a[2].numel()) or product(*a))
    monkeypatch.setattr(ranking, "_pair_products", lambda *a: exact.append(len(a[1])) or pairs(*a))
    monkeypatch.setattr(screen, "MODE", "always")
    assert ev.evaluate(**problem, ks=ks, block_size=256) == want
    assert sum(exact) < 0.2 * 900 * 800
    assert torch.equal(ev.first_correct_rank(**problem, block_size=256), want_ranks)


@pytest.mark.parametrize("data", ["random", "clustered"])
def test_screen_is_tried_on_a_few_rows_and_given_up_where_it_saves_nothing(data, monkeypatch):
    # random directions: most entries reach their thresholds, so the probe of the first home block
    # gives up the screen and the rest runs unscreened; clustered data keeps it
    rng = np.random.default_rng(3)
    labels, gallery_labels = rng.integers(0, 40, 1300), rng.integers(0, 40, 1100)
    if data == "random":
        embeddings = rng.standard_normal((2400, 32)).astype(np.float32)
    else:
        centres = rng.standard_normal((40, 32))
        embeddings = centres[np.concatenate([labels, gallery_labels])] + 0.3 * rng.standard_normal((2400, 32))
        embeddings = embeddings.astype(np.float32)
    problem = {
        "embeddings": embeddings[:1300],
        "labels": labels,
        "gallery": embeddings[1300:],
        "gallery_labels": gallery_labels,
    }
    monkeypatch.setattr(screen, "MODE", "never")
    want = ev.evaluate(**problem, ks=(1, 4, 16), block_size=1300)
    want_ranks = ev.first_correct_rank(**problem, block_size=1300)
    screens = []
    build = screen.Screen
    monkeypatch.setattr(ranking, "Screen", lambda *a: screens.append(build(*a)) or screens[-1])
    monkeypatch.setattr(screen, "MODE", "always")
    assert ev.evaluate(**problem, ks=(1, 4, 16), block_size=1300) == want
    assert torch.equal(ev.first_correct_rank(**problem, block_size=1300), want_ranks)
    if data == "random":
        # one probe of 256 rows against the first home block's references, then no more
        assert [s.given_up for s in screens] == [True, True]
        assert all(s.screened <= ranking._PROBE_ROWS * 1100 for s in screens)
    else:
        assert [s.given_up for s in screens] == [False, False]
        assert all(s.screened > ranking._PROBE_ROWS * 1100 for s in screens)
