"""Clustering for NMI: seeded Lloyd's k-means (k-means++ init) and NMI from a contingency table."""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.errors import UserError


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, points x centres (clamped at 0)."""
    cross = points @ centres.T
    return (points.square().sum(1)[:, None] - 2 * cross + centres.square().sum(1)[None, :]).clamp_(min=0)


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D^2."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    chosen = [first]
    nearest = _squared_distances(points, points[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, _squared_distances(points, points[index : index + 1]).squeeze(1))
    return points[chosen].clone()


def _assign(points: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Nearest centre of each point (in blocks of rows) and the total squared distance."""
    step = max(1, (1 << 24) // max(1, centres.shape[0]))
    labels, inertia = [], 0.0
    for start in range(0, points.shape[0], step):
        distances = _squared_distances(points[start : start + step], centres)
        best, index = distances.min(dim=1)
        labels.append(index)
        inertia += float(best.sum())
    return torch.cat(labels), inertia


def kmeans(points: torch.Tensor, k: int, seed: int, restarts: int, max_iter: int) -> torch.Tensor:
    """Lloyd's k-means; the restart with the lowest inertia wins. An empty cluster keeps its centre."""
    generator = torch.Generator(device=points.device).manual_seed(seed)
    best_labels, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = _kmeans_plus_plus(points, k, generator)
        previous = None
        for _ in range(max_iter):
            assignment, inertia = _assign(points, centres)
            if previous is not None and torch.equal(assignment, previous):
                break
            previous = assignment
            sums = torch.zeros_like(centres).index_add_(0, assignment, points)
            sizes = torch.bincount(assignment, minlength=k)
            filled = sizes > 0
            centres[filled] = sums[filled] / sizes[filled, None].to(points.dtype)
        assignment, inertia = _assign(points, centres)
        if inertia < best_inertia:
            best_labels, best_inertia = assignment, inertia
    assert best_labels is not None
    return best_labels


def _entropy(counts: torch.Tensor, total: int) -> float:
    p = counts.to(torch.float64) / total
    return float(-(p * torch.log(p)).sum())


def normalized_mutual_info(labels: torch.Tensor | np.ndarray, clusters: torch.Tensor | np.ndarray) -> float:
    """NMI between two labellings of the same items: I(U; V) / ((H(U) + H(V)) / 2), from the
    (sparse) contingency table; 1.0 when both put everything in one group (scikit-learn's rule)."""
    a = torch.as_tensor(labels).reshape(-1)
    b = torch.as_tensor(clusters).reshape(-1).to(a.device)
    if len(a) != len(b) or len(a) == 0:
        raise UserError(f"NMI needs two non-empty labellings of equal length; got {len(a)} and {len(b)}")
    _, a_index, a_counts = torch.unique(a, return_inverse=True, return_counts=True)
    _, b_index, b_counts = torch.unique(b, return_inverse=True, return_counts=True)
    if len(a_counts) == len(b_counts) == 1:
        return 1.0
    n = len(a)
    _, cell_index, cell_counts = torch.unique(
        a_index * len(b_counts) + b_index, return_inverse=True, return_counts=True
    )
    joint = torch.zeros(len(cell_counts), dtype=torch.int64, device=a.device)
    first_a = joint.clone().scatter_(0, cell_index, a_index)
    first_b = joint.scatter_(0, cell_index, b_index)
    n_ij = cell_counts.to(torch.float64)
    expected = a_counts[first_a].to(torch.float64) * b_counts[first_b].to(torch.float64)
    mutual = float((n_ij / n * torch.log(n * n_ij / expected)).sum())
    if mutual <= 0:
        return 0.0
    normaliser = (_entropy(a_counts, n) + _entropy(b_counts, n)) / 2
    return min(1.0, max(0.0, mutual / normaliser))
