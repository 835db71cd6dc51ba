"""harness.evaluate: exact against a brute-force full sort per query, hand-made edge cases, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import evaluate as ev
from harness.errors import UserError
from harness.evaluate import inputs, ranking, screen, state

KS = (1, 2, 4, 8, 1000)


def brute_force(embeddings, labels, gallery=None, gallery_labels=None, ks=KS, exclude_singletons=False):
    """Obviously correct reference: a full sort of each query's references (float64), other-class
    references ranked ahead of same-class ones at equal similarity (the documented tie rule)."""
    queries, query_labels = np.asarray(embeddings, np.float64), np.asarray(labels)
    leave_one_out = gallery is None
    references = queries if leave_one_out else np.asarray(gallery, np.float64)
    reference_labels = query_labels if leave_one_out else np.asarray(gallery_labels)
    hits, precisions, r_precisions = {k: [] for k in ks}, [], []
    for q in range(len(queries)):
        keep = np.arange(len(references)) != q if leave_one_out else np.ones(len(references), bool)
        similarity = references[keep] @ queries[q]
        correct = (reference_labels[keep] == query_labels[q]).astype(int)
        correct = correct[np.lexsort((correct, -similarity))]  # by similarity, then wrong first
        r = int(correct.sum())
        if r == 0:
            if not exclude_singletons:
                for k in ks:
                    hits[k].append(0.0)
            continue
        for k in ks:
            hits[k].append(float(correct[:k].any()))
        first_r = correct[:r]
        precisions.append(float((np.cumsum(first_r) / np.arange(1, r + 1) * first_r).sum() / r))
        r_precisions.append(first_r.sum() / r)

    def mean(values):
        return float(np.mean(values)) if values else math.nan

    return {f"recall@{k}": mean(v) for k, v in hits.items()} | {
        "map_at_r": mean(precisions),
        "r_precision": mean(r_precisions),
    }


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


def clustered(rng, labels, dims, spread):
    centres = rng.standard_normal((int(labels.max()) + 1, dims))
    return centres[labels] + spread * rng.standard_normal((len(labels), dims))


# ---------------------------------------------------------------------- against the brute force


@st.composite
def small_problems(draw):
    """Small-integer embeddings (many exact ties, exact in float32), random labels, both modes."""
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    n, dims, classes = draw(st.integers(1, 30)), draw(st.integers(1, 4)), draw(st.integers(1, 10))
    problem = {
        "embeddings": rng.integers(-2, 3, (n, dims)).astype(np.float32),
        "labels": rng.integers(0, classes, n),
    }
    if draw(st.booleans()):
        m = draw(st.integers(1, 25))
        problem["gallery"] = rng.integers(-2, 3, (m, dims)).astype(np.float32)
        problem["gallery_labels"] = rng.integers(0, classes, m)
    return problem


@settings(max_examples=120, deadline=None)
@given(
    problem=small_problems(),
    block_size=st.integers(1, 12),
    exclude=st.booleans(),
    budget=st.sampled_from([1, 7, ranking.STATE_BUDGET]),
    sparse_ratio=st.sampled_from([1, 32, 10**9]),
    pair_elements=st.sampled_from([1, ranking._PAIR_ELEMENTS]),
    screen_mode=st.sampled_from(["always", "never"]),
)
def test_matches_brute_force_with_ties(
    problem, block_size, exclude, budget, sparse_ratio, pair_elements, screen_mode
):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(screen, "MODE", screen_mode)  # bfloat16 screen in front of the products, or not
        patch.setattr(ranking, "STATE_BUDGET", budget)  # queries in chunks of a few (no symmetric saving)
        patch.setattr(state, "_SPARSE_RATIO", sparse_ratio)
        patch.setattr(ranking, "_PAIR_ELEMENTS", pair_elements)  # 1: every class cut into single rows
        got = ev.evaluate(**problem, ks=KS, block_size=block_size, exclude_singletons=exclude)
        ranks = ev.first_correct_rank(**problem, block_size=block_size).numpy()
    want = brute_force(**problem, exclude_singletons=exclude)
    assert_same(got, want)
    counted = ranks > 0 if exclude else np.ones(len(ranks), bool)
    for k in KS:  # per-query ranks give the same recalls, queries in input order
        hits = ((ranks >= 1) & (ranks <= k))[counted]
        assert (float(hits.mean()) if len(hits) else math.nan) == pytest.approx(
            want[f"recall@{k}"], nan_ok=True
        )


@settings(max_examples=80, deadline=None)
@given(
    problem=small_problems(),
    ks=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    block_size=st.integers(1, 12),
    columns=st.sampled_from([1, 3, ranking.GALLERY_COLUMNS]),
    hot_ratio=st.sampled_from([1, 2, 10**9]),
    screen_sparse_ratio=st.sampled_from([0, ranking._SCREEN_SPARSE_RATIO, 10**9]),
    screen_mode=st.sampled_from(["always", "never"]),
)
def test_small_k_settles_queries_early_and_matches_brute_force(
    problem, ks, block_size, columns, hot_ratio, screen_sparse_ratio, screen_mode
):
    # with small K a query whose count ahead reaches max(K, R) leaves the sweep; rows whose largest
    # entry is below the threshold are left out of a block (always / by default / never copied out);
    # behind the screen, candidates are computed pair by pair always / by default / as whole rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(screen, "MODE", screen_mode)
        patch.setattr(ranking, "_SCREEN_SPARSE_RATIO", screen_sparse_ratio)
        patch.setattr(ranking, "GALLERY_COLUMNS", columns)
        patch.setattr(state, "_HOT_RATIO", hot_ratio)
        got = ev.evaluate(**problem, ks=ks, block_size=block_size)
        alone = {f"recall@{k}": v for k, v in ev.recall_at_k(**problem, ks=ks, block_size=block_size).items()}
        alone["map_at_r"] = ev.map_at_r(**problem, block_size=block_size)
        alone["r_precision"] = ev.r_precision(**problem, block_size=block_size)
    want = brute_force(**problem, ks=ks)
    assert_same(got, want)
    assert_same(alone, want)


def test_settled_queries_leave_the_gallery_sweep(monkeypatch):
    # unrelated random directions: almost every query has more than K other-class references ahead
    # of its first correct one after a few blocks, and is then left out of the products
    rng = np.random.default_rng(2)
    labels, gallery_labels = rng.integers(0, 60, 400), rng.integers(0, 60, 500)
    problem = {
        "embeddings": rng.standard_normal((400, 16)).astype(np.float32),
        "labels": labels,
        "gallery": rng.standard_normal((500, 16)).astype(np.float32),
        "gallery_labels": gallery_labels,
    }
    shapes = []
    product = ranking._product
    monkeypatch.setattr(ranking, "_product", lambda *args: shapes.append(args[2].shape) or product(*args))
    monkeypatch.setattr(ranking, "GALLERY_COLUMNS", 50)
    monkeypatch.setattr(screen, "MODE", "never")  # the exact products themselves are counted
    got = ev.evaluate(**problem, ks=[1, 2], block_size=100)
    assert sum(a * b for a, b in shapes) < 400 * 500 / 2
    assert_same(got, brute_force(**problem, ks=[1, 2]))
    shapes.clear()  # exact ranks: every query against every reference
    ranks = ev.first_correct_rank(**problem, block_size=100).numpy()
    assert sum(a * b for a, b in shapes) == 400 * 500
    assert [float(((ranks >= 1) & (ranks <= k)).mean()) for k in (1, 2)] == [got["recall@1"], got["recall@2"]]


@pytest.fixture(scope="module", params=["leave_one_out", "query_gallery", "chunked", "float32_gallery"])
def clustered_problem(request):
    """Clustered data in both modes, from easy (most queries tracked for MAP@R to the end) to hard;
    the brute-force answer computed once per problem. float32 query -> gallery problems go behind
    the bfloat16 screen (float64 ones never do)."""
    rng = np.random.default_rng(7)
    problems = []
    for spread in (0.3, 2.0):
        labels = rng.integers(0, 30, 260)
        problem = {"embeddings": clustered(rng, labels, 8, spread), "labels": labels}
        if request.param in ("query_gallery", "float32_gallery"):
            problem["gallery_labels"] = rng.integers(0, 34, 200)  # some query classes absent
            problem["gallery"] = clustered(rng, problem["gallery_labels"], 8, spread)
        if request.param == "float32_gallery":
            problem["embeddings"] = problem["embeddings"].astype(np.float32)
            problem["gallery"] = problem["gallery"].astype(np.float32)
        problems.append((problem, brute_force(**problem, ks=(1, 3, 10, 100))))
    return request.param, problems


@pytest.mark.parametrize("sparse_ratio", [1, 32, 10**9])  # gather one by one / default / always top-k
def test_matches_brute_force_on_clustered_data(clustered_problem, sparse_ratio, monkeypatch):
    mode, problems = clustered_problem
    monkeypatch.setattr(state, "_SPARSE_RATIO", sparse_ratio)
    monkeypatch.setattr(screen, "MODE", "always")
    if mode == "chunked":  # queries in several chunks, no symmetric saving
        monkeypatch.setattr(ranking, "STATE_BUDGET", 500)
    for problem, want in problems:
        got = ev.evaluate(**problem, ks=(1, 3, 10, 100), block_size=50)
        assert_same(got, want)
        assert_same(ev.evaluate(**problem, ks=(1, 3, 10, 100)), want)  # one block or many: the same


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_blocks_stay_within_block_size_and_follow_classes(leave_one_out, monkeypatch):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 40, 300)
    problem = {"embeddings": clustered(rng, labels, 8, 1.0), "labels": labels}
    if not leave_one_out:
        problem["gallery_labels"] = rng.integers(0, 40, 250)
        problem["gallery"] = clustered(rng, problem["gallery_labels"], 8, 1.0)
    shapes = []
    product = ranking._product
    monkeypatch.setattr(ranking, "_product", lambda *args: shapes.append(args[2].shape) or product(*args))
    monkeypatch.setattr(screen, "MODE", "never")  # the exact products themselves are counted
    got = ev.evaluate(**problem, ks=[1, 10], block_size=64)
    assert max(max(shape) for shape in shapes) <= 64
    # leave-one-out: the upper triangle, diagonal blocks whole; query -> gallery: each pair once
    assert sum(a * b for a, b in shapes) <= (300 * 300 / 2 + 300 * 64 / 2 if leave_one_out else 300 * 250)
    assert_same(got, brute_force(**problem, ks=[1, 10]))
    sets = inputs.sort_by_class(problem["embeddings"], labels, None, None)
    blocks = ranking._row_blocks(sets, 0, 300, 64)
    assert (
        [b[0] for b in blocks[1:]] == [b[1] for b in blocks[:-1]]
        and blocks[0][0] == 0
        and blocks[-1][1] == 300
    )
    starts = set(sets.ranges.query_start)
    assert all(b[0] in starts and b[1] - b[0] <= 64 for b in blocks)  # cut at class boundaries


def test_public_functions_agree_with_evaluate():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 12, 150)
    embeddings = torch.nn.functional.normalize(
        torch.as_tensor(clustered(rng, labels, 16, 1.0)), dim=1
    ).float()
    together = ev.evaluate(embeddings, labels, ks=[1, 5])
    assert ev.recall_at_k(embeddings, labels, [1, 5]) == {1: together["recall@1"], 5: together["recall@5"]}
    assert ev.map_at_r(embeddings, labels) == together["map_at_r"]
    assert ev.r_precision(embeddings, labels) == together["r_precision"]
    assert ev.evaluate(embeddings, labels, ks=[5], metrics=["map_at_r"]) == {"map_at_r": together["map_at_r"]}
    assert all(0.0 <= value <= 1.0 for value in together.values())


def test_class_grouping_leaves_torch_threads_as_they_were():
    # query -> gallery with MAP@R and small blocks: classes are grouped by a k-means run on one thread
    rng = np.random.default_rng(11)
    labels, gallery_labels = rng.integers(0, 30, 200), rng.integers(0, 30, 180)
    problem = {
        "embeddings": clustered(rng, labels, 8, 1.0),
        "labels": labels,
        "gallery": clustered(rng, gallery_labels, 8, 1.0),
        "gallery_labels": gallery_labels,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = ev.evaluate(**problem, ks=[1, 10], block_size=40)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert_same(got, brute_force(**problem, ks=[1, 10]))


# ---------------------------------------------------------------------------------- hand-made cases


def test_tie_with_other_class_counts_as_ranked_ahead():
    # query 0: item 1 (same class) and item 2 (other class) both at similarity 1
    embeddings = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    labels = [0, 0, 1, 2]
    recall = ev.recall_at_k(embeddings, labels, [1, 2], exclude_singletons=True)
    # queries 0, 1: the other-class tie is ranked first -> miss at 1, hit at 2; 2 and 3 have no class-mate
    assert recall == {1: 0.0, 2: 1.0}
    assert ev.map_at_r(embeddings, labels) == 0.0  # R = 1, the class-mate is at position 2
    assert ev.r_precision(embeddings, labels) == 0.0
    assert ev.first_correct_rank(embeddings, labels).tolist() == [2, 2, 0, 0]
    order = [3, 0, 2, 1]  # per-query ranks follow the input order
    shuffled = ev.first_correct_rank([embeddings[i] for i in order], [labels[i] for i in order])
    assert shuffled.tolist() == [0, 2, 0, 2]


def test_query_excluded_by_index_not_by_value():
    # item 1 duplicates item 0 and shares its class: it stays a reference of query 0 at rank 1
    embeddings = [[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]]
    labels = [5, 5, 7]
    assert ev.recall_at_k(embeddings, labels, [1], exclude_singletons=True) == {1: 1.0}
    assert ev.map_at_r(embeddings, labels) == 1.0


def test_singletons_count_as_misses_or_are_excluded():
    embeddings = np.eye(4)[[0, 0, 1, 2]].astype(np.float32)
    labels = [0, 0, 1, 2]  # classes 1 and 2 have one member
    assert ev.recall_at_k(embeddings, labels, [1, 3]) == {1: 0.5, 3: 0.5}
    assert ev.recall_at_k(embeddings, labels, [1, 3], exclude_singletons=True) == {1: 1.0, 3: 1.0}
    assert ev.map_at_r(embeddings, labels) == 1.0  # R = 0 queries are excluded
    all_alone = ev.evaluate(embeddings[:3], [0, 1, 2], ks=[1], exclude_singletons=True)
    assert all(math.isnan(v) for v in all_alone.values())
    assert ev.recall_at_k(embeddings[:1], [0], [1]) == {1: 0.0}  # one item: its own singleton


def test_map_at_r_and_r_precision_by_hand():
    # query 0 (class A, R = 3): ranking A, B, A, A, B -> precision@1 = 1, @3 = 2/3 within the first R
    query = [[1.0, 0.0]]
    similarities = [0.9, 0.8, 0.7, 0.6, 0.5]
    gallery = [[s, math.sqrt(1 - s * s)] for s in similarities]
    gallery_labels = [0, 1, 0, 0, 1]
    assert ev.map_at_r(query, [0], gallery, gallery_labels) == pytest.approx((1 + 2 / 3) / 3)
    assert ev.r_precision(query, [0], gallery, gallery_labels) == pytest.approx(2 / 3)
    assert ev.recall_at_k(query, [0], [1, 2], gallery, gallery_labels) == {1: 1.0, 2: 1.0}
    # no self-exclusion in query -> gallery mode: the query itself in the gallery is found at rank 1
    assert ev.recall_at_k(query, [0], [1], query, [0]) == {1: 1.0}


def test_k_larger_than_references_is_clipped():
    embeddings = np.eye(3)[[0, 1, 2, 0]]
    labels = [0, 1, 1, 2]
    assert ev.recall_at_k(embeddings, labels, [3, 1000]) == {3: 0.5, 1000: 0.5}


def test_accepts_numpy_lists_half_precision_and_grad():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 60)
    embeddings = clustered(rng, labels, 6, 0.5)
    want = ev.evaluate(embeddings.astype(np.float32), labels, ks=[1, 4])
    assert ev.evaluate(torch.tensor(embeddings, dtype=torch.float32), torch.tensor(labels), ks=[1, 4]) == want
    assert ev.evaluate(embeddings.astype(np.float32).tolist(), labels.tolist(), ks=[1, 4]) == want
    half = ev.evaluate(torch.tensor(embeddings).half(), labels.astype(np.int32), ks=[1, 4])
    assert half.keys() == want.keys()
    graded = torch.tensor(embeddings, dtype=torch.float32, requires_grad=True)
    assert ev.evaluate(graded, labels, ks=[1, 4]) == want


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ev.recall_at_k(np.zeros((0, 4)), [], [1]), "is empty"),
        (lambda: ev.recall_at_k([[0.0, math.nan], [1.0, 0.0]], [0, 0], [1]), "NaN or infinite"),
        (lambda: ev.map_at_r([[math.inf, 0.0]], [0]), "NaN or infinite"),
        (lambda: ev.map_at_r([[1e30, 0.0]], [0]), "too large"),
        (lambda: ev.recall_at_k([1.0, 2.0], [0, 1], [1]), "2-D"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0], [1]), "one label per embedding"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0.5, 1.0], [1]), "integer class ids"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0, 1], []), "ks must be"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0, 1], [0]), "ks must be"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0, 1], 3), "ks must be"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0, 1], [1], [[1.0]]), "given together"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0, 1], [1], [[1.0, 2.0]], [0]), "dimensions"),
        (lambda: ev.evaluate([[1.0], [2.0]], [0, 1], ks=[1], metrics=["recal"]), "choose from"),
        (lambda: ev.recall_at_k([[1.0], [2.0]], [0, 1], [1], block_size=-3), "block_size"),
    ],
)
def test_user_errors_are_one_line(call, message):
    with pytest.raises(UserError, match=message) as err:
        call()
    assert "\n" not in str(err.value)
