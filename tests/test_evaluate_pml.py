"""harness.evaluate against pytorch-metric-learning's AccuracyCalculator where definitions match.

PML drops queries without a same-class reference from every metric (our ``exclude_singletons``)
and ranks by faiss's float32 L2 distances; on random data without near-ties the rankings agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import evaluate as ev

accuracy_calculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")


def unit_rows(rng: np.random.Generator, count: int, dims: int = 24) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.as_tensor(rng.standard_normal((count, dims)), dtype=torch.float32), dim=1
    )


def pml(*args, **kwargs) -> dict[str, float]:
    calculator = accuracy_calculator.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count"
    )
    return calculator.get_accuracy(*args, **kwargs)


def ours(*args, **kwargs) -> dict[str, float]:
    values = ev.evaluate(*args, ks=[1], exclude_singletons=True, **kwargs)
    return {
        "precision_at_1": values["recall@1"],
        "r_precision": values["r_precision"],
        "mean_average_precision_at_r": values["map_at_r"],
    }


def test_leave_one_out_matches_pml():
    rng = np.random.default_rng(11)
    labels = torch.as_tensor(rng.integers(0, 60, 500))  # class sizes 1 to ~18, some singletons
    embeddings = unit_rows(rng, 500)
    want = pml(embeddings, labels)
    assert ours(embeddings, labels) == pytest.approx(want, abs=1e-12)


def test_query_gallery_matches_pml():
    rng = np.random.default_rng(12)
    query_labels = torch.as_tensor(rng.integers(0, 50, 300))
    gallery_labels = torch.as_tensor(rng.integers(0, 55, 400))
    queries, gallery = unit_rows(rng, 300), unit_rows(rng, 400)
    want = pml(queries, query_labels, gallery, gallery_labels, ref_includes_query=False)
    got = ours(queries, query_labels, gallery=gallery, gallery_labels=gallery_labels)
    assert got == pytest.approx(want, abs=1e-12)
