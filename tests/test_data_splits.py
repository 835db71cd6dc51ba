"""Validation split (split_classes, class folds), relabelling and the DatasetSplits contract."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import WriteExperiment

from harness.builders import load_splits
from harness.config import expand_cells, load_experiment
from harness.data import DatasetSplits, class_folds, relabel, split_classes
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


def test_class_folds_partition_the_classes_into_near_equal_disjoint_folds() -> None:
    labels = labels_for(23, offset=5)
    folds = class_folds(labels, 4, seed=7)
    assert len(folds) == 4 and sorted(len(f) for f in folds) == [5, 6, 6, 6]
    together = np.concatenate(folds)
    assert len(set(together)) == len(together) == 23  # disjoint
    assert set(together) == set(labels)  # every training class in exactly one fold
    assert all(np.all(np.diff(f) > 0) for f in folds)


def test_class_folds_depend_on_the_class_set_and_seed_only() -> None:
    labels = labels_for(20)
    folds = class_folds(labels, 4, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(folds, class_folds(labels[::-1], 4, seed=1), strict=True))
    other = class_folds(labels, 4, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(folds, other, strict=True))


def test_each_fold_is_the_validation_set_of_its_split() -> None:
    labels = labels_for(12, per_class=4)
    folds = class_folds(labels, 3, seed=0)
    seen_val: list[np.ndarray] = []
    for fold, classes in enumerate(folds):
        train_idx, val_idx = split_classes(labels, 0.0, seed=0, folds=3, fold=fold)  # fraction is not used
        assert set(labels[val_idx]) == set(classes)
        assert set(labels[train_idx]) == set(labels) - set(classes)
        assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(labels)))
        seen_val.append(val_idx)
    every_image = np.arange(len(labels))
    assert np.array_equal(np.sort(np.concatenate(seen_val)), every_image)  # each image validated once


@pytest.mark.parametrize(
    ("n_classes", "folds", "fold", "message"),
    [
        (9, 1, 0, "at least 2 class folds"),
        (9, 5, 0, "folds of 1 classes"),
        (3, 2, 0, "folds of 1 classes"),
        (9, 3, 3, "val_fold is 3; expected a fold number from 0 to 2"),
    ],
)
def test_bad_folds_are_one_line_user_errors(n_classes: int, folds: int, fold: int, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        split_classes(labels_for(n_classes), 0.0, seed=0, folds=folds, fold=fold)
    assert "\n" not in str(caught.value)


def test_two_folds_of_two_classes_are_the_least() -> None:
    labels = labels_for(4)
    train_idx, val_idx = split_classes(labels, 0.0, seed=0, folds=2, fold=1)
    assert len(set(labels[train_idx])) == len(set(labels[val_idx])) == 2


def test_a_cell_validating_on_a_fold_trains_on_the_other_folds_only(tiny_experiment: WriteExperiment) -> None:
    sets = {"data.val_folds": 3, "data.val_fraction": 0.33, "data.val_fold": 2}
    (cell,) = expand_cells(load_experiment(tiny_experiment({**sets, "grid.losses": ["ms"]})))
    splits = load_splits(cell)
    training_classes = np.arange(24)  # the tiny glyphs: 48 classes, the first half for training
    folds = class_folds(training_classes, 3, seed=cell.data.val_seed)
    assert splits.val is not None and set(splits.val.labels) == set(folds[2])
    assert set(splits.train.labels) == set(folds[0]) | set(folds[1])
    other = cell.model_copy(update={"data": cell.data.model_copy(update={"val_fold": 0})})
    assert other.cell_id != cell.cell_id  # each fold is a cell of its own
    assert cell.model_dump()["data"]["val_fold"] == 2  # config.json records the fold


def test_without_folds_the_fold_settings_are_left_out_of_dumps(tiny_experiment: WriteExperiment) -> None:
    cell = expand_cells(load_experiment(tiny_experiment()))[0]
    dumped = cell.model_dump(mode="json")["data"]
    assert cell.data.val_folds == 0 and "val_folds" not in dumped and "val_fold" not in dumped
    assert type(cell.data).model_validate(dumped) == cell.data  # and read back as off


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"data.val_folds": 3},
            "val_folds 3 holds out 1/3 of the training classes; set data.val_fraction: 0.33",
        ),
        ({"data.val_folds": 1}, "1 fold would leave no training classes"),
        ({"data.val_fold": 1}, "val_fold: 1 needs data.val_folds"),
        (
            {"data.val_folds": 4, "data.val_fraction": 0.25, "data.val_fold": 4},
            "is not a fold of val_folds 4",
        ),
    ],
)
def test_fold_settings_are_checked_in_one_line(
    tiny_experiment: WriteExperiment, sets: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message) as caught:
        load_experiment(tiny_experiment(sets))
    assert "\n" not in str(caught.value)


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
