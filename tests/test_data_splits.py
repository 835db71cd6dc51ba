"""Validation split (split_classes), relabelling and the DatasetSplits contract."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data import DatasetSplits, relabel, split_classes
from harness.errors import UserError


def labels_for(n_classes: int, per_class: int = 3, offset: int = 1) -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(offset, offset + n_classes), per_class))


def test_split_is_class_disjoint_and_takes_the_fraction_of_classes() -> None:
    labels = labels_for(20)
    train_idx, val_idx = split_classes(labels, 0.25, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(labels)))
    assert not set(labels[train_idx]) & set(labels[val_idx])
    assert len(set(labels[val_idx])) == 5
    assert train_idx.dtype == val_idx.dtype == np.int64
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)


def test_split_is_reproducible_and_depends_on_the_seed_and_class_set_only() -> None:
    labels = labels_for(30)
    _, val_a = split_classes(labels, 0.2, seed=1)
    _, val_b = split_classes(labels, 0.2, seed=1)
    assert np.array_equal(val_a, val_b)
    _, val_other = split_classes(labels, 0.2, seed=2)
    assert set(labels[val_a]) != set(labels[val_other])
    reordered = labels[::-1]
    _, val_reordered = split_classes(reordered, 0.2, seed=1)
    assert set(reordered[val_reordered]) == set(labels[val_a])


def test_fraction_zero_gives_no_validation_images() -> None:
    labels = labels_for(4)
    train_idx, val_idx = split_classes(labels, 0.0, seed=0)
    assert np.array_equal(train_idx, np.arange(len(labels))) and val_idx.size == 0


@pytest.mark.parametrize(
    ("n_classes", "fraction", "message"),
    [
        (10, 1.0, r"in \[0, 1\)"),
        (10, -0.1, r"in \[0, 1\)"),
        (10, 0.05, "1 validation"),
        (4, 0.75, "1 training"),
    ],
)
def test_bad_fractions_raise_user_errors(n_classes: int, fraction: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        split_classes(labels_for(n_classes), fraction, seed=0)


def test_negative_seed_is_a_user_error() -> None:
    with pytest.raises(UserError, match="val_seed is -1"):
        split_classes(labels_for(10), 0.2, seed=-1)


def test_relabel_maps_onto_0_to_c_minus_1_in_class_order() -> None:
    assert relabel(np.array([101, 7, 7, 55])).tolist() == [2, 0, 0, 1]
    shared = np.array([3, 9, 12])
    assert relabel(np.array([12, 3]), shared).tolist() == [2, 0]
    assert relabel(np.array([9]), shared).tolist() == [1]
    with pytest.raises(ValueError):
        relabel(np.array([4]), shared)


def test_dataset_splits_checks_its_eval_mode() -> None:
    train, test = object(), object()
    splits = DatasetSplits(train=train, test=test, eval_mode="leave_one_out", default_ks=(1, 2))
    assert splits.val is None and splits.query is None and splits.gallery is None
    query_gallery = DatasetSplits(
        train=train, query=test, gallery=test, eval_mode="query_gallery", default_ks=(1,)
    )
    assert query_gallery.test is None
    with pytest.raises(ValueError):
        DatasetSplits(train=train, eval_mode="leave_one_out", default_ks=(1,))
    with pytest.raises(ValueError):
        DatasetSplits(train=train, query=test, eval_mode="query_gallery", default_ks=(1,))
    with pytest.raises(ValueError):
        DatasetSplits(train=train, test=test, eval_mode="k_fold", default_ks=(1,))
    with pytest.raises(ValueError):
        DatasetSplits(train=train, test=test, eval_mode="leave_one_out", default_ks=())
