"""harness.evaluate NMI: the contingency-table formula and the k-means behind ``nmi``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import evaluate as ev
from harness.errors import UserError


def test_nmi_of_labellings_by_hand():
    assert ev.normalized_mutual_info([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert ev.normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    assert ev.normalized_mutual_info([3, 3, 3], [7, 7, 7]) == 1.0  # both one group: scikit-learn's rule
    assert ev.normalized_mutual_info([0, 0, 1, 1], [0, 0, 0, 0]) == 0.0
    # labels {a, a, b, b} vs clusters {0, 0, 0, 1}: contingency [[2, 0], [1, 1]]
    mutual = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_labels, h_clusters = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    want = mutual / ((h_labels + h_clusters) / 2)
    assert ev.normalized_mutual_info(np.array([5, 5, 9, 9]), torch.tensor([0, 0, 0, 1])) == pytest.approx(
        want
    )


def test_nmi_matches_scikit_learn_arithmetic_normalisation():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for classes, clusters in [(3, 3), (10, 4), (50, 60)]:
        a, b = rng.integers(0, classes, 700), rng.integers(0, clusters, 700)
        b[:300] = a[:300] % clusters  # some dependence
        want = metrics.normalized_mutual_info_score(a, b, average_method="arithmetic")
        assert ev.normalized_mutual_info(a, b) == pytest.approx(want, abs=1e-12)


def test_nmi_of_embeddings_finds_separated_clusters_and_is_reproducible():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 30)
    centres = rng.standard_normal((6, 10)) * 10
    embeddings = torch.as_tensor(centres[labels] + rng.standard_normal((180, 10)), dtype=torch.float32)
    assert ev.nmi(embeddings, labels) == pytest.approx(1.0)
    noisy = embeddings + torch.as_tensor(rng.standard_normal((180, 10)) * 8, dtype=torch.float32)
    first = ev.nmi(noisy, labels, seed=3)
    assert 0.0 < first < 1.0
    assert ev.nmi(noisy, labels, seed=3) == first
    assert ev.evaluate(noisy, labels, ks=[1], metrics=["nmi"], seed=3) == {"nmi": first}


def test_nmi_with_identical_points_and_errors():
    assert ev.nmi(np.ones((5, 3)), [0, 0, 1, 1, 2]) == 0.0  # one cluster left for three classes
    with pytest.raises(UserError, match="restarts"):
        ev.nmi(np.eye(3), [0, 1, 2], restarts=0)
    with pytest.raises(UserError, match="equal length"):
        ev.normalized_mutual_info([0, 1], [0])
