"""The split container every dataset builder returns, and the class-disjoint validation split.

:class:`DatasetSplits` is the contract between the data builders and the trainer (see
docs/ARCHITECTURE.md). :func:`split_classes` carves a validation set out of the training classes (a
random fraction of them, or one of K disjoint class folds: :func:`class_folds`); :func:`relabel` maps
original class ids onto 0..C-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from harness.errors import UserError

EVAL_MODES = ("leave_one_out", "query_gallery")
MIN_SPLIT_CLASSES = 2


class LabelledDataset(Protocol):
    """What every dataset object offers: ``ds[i] -> (image CxHxW float tensor, label)`` and ``ds.labels``."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


@dataclass(frozen=True, kw_only=True)
class DatasetSplits:
    """The datasets of one benchmark.

    ``train`` uses the training transform, all others the evaluation transform. ``val`` (carved from the
    training classes, evaluated leave-one-out) is None when no validation split was asked for.
    ``eval_mode == "leave_one_out"``: ``test`` is set, ``query``/``gallery`` are None;
    ``eval_mode == "query_gallery"``: ``query`` and ``gallery`` are set (sharing one label space),
    ``test`` is None.
    """

    train: LabelledDataset
    val: LabelledDataset | None = None
    test: LabelledDataset | None = None
    query: LabelledDataset | None = None
    gallery: LabelledDataset | None = None
    eval_mode: str
    default_ks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {self.eval_mode!r}")
        has_test = self.test is not None
        has_query_gallery = self.query is not None and self.gallery is not None
        if self.eval_mode == "leave_one_out" and (
            not has_test or self.query is not None or self.gallery is not None
        ):
            raise ValueError("leave_one_out splits need `test` and no `query`/`gallery`")
        if self.eval_mode == "query_gallery" and (has_test or not has_query_gallery):
            raise ValueError("query_gallery splits need `query` and `gallery` and no `test`")
        if not self.default_ks or any(k < 1 for k in self.default_ks):
            raise ValueError(f"default_ks must be positive integers, got {self.default_ks!r}")


def relabel(class_ids: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Map original class ids onto labels 0..C-1 in the order of ``classes`` (sorted unique ids by default).

    Pass the same ``classes`` to several splits that must share one label space (query and gallery).
    """
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if classes is None:
        classes = np.unique(class_ids)
    labels = np.searchsorted(classes, class_ids)
    if labels.size and (labels.max() >= len(classes) or not np.array_equal(classes[labels], class_ids)):
        raise ValueError("relabel: some class ids are not in `classes`")
    return labels.astype(np.int64)


def class_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Partition the class ids of ``labels`` into ``folds`` disjoint folds of near-equal size
    (sorted ids each).

    The classes are shuffled with ``seed`` and cut into consecutive runs whose sizes differ by at most
    one, so the folds cover every class exactly once and depend only on the set of class ids, ``folds``
    and ``seed``. Every fold and the classes outside it must keep at least two classes.
    """
    if folds < 2:
        raise UserError(f"val_folds is {folds}; expected 0 (no folds) or at least 2 class folds")
    if seed < 0:
        raise UserError(f"val_seed is {seed}; expected an integer >= 0")
    classes = np.unique(np.asarray(labels))
    smallest, largest = len(classes) // folds, -(-len(classes) // folds)
    if smallest < MIN_SPLIT_CLASSES or len(classes) - largest < MIN_SPLIT_CLASSES:
        raise UserError(
            f"val_folds {folds} of {len(classes)} training classes gives folds of {smallest} classes; "
            f"every fold and the classes outside it need at least {MIN_SPLIT_CLASSES}: choose fewer val_folds"
        )
    shuffled = np.random.default_rng(seed).permutation(classes)
    return [np.sort(part) for part in np.array_split(shuffled, folds)]


def split_classes(
    labels: np.ndarray, fraction: float, seed: int, *, folds: int = 0, fold: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices class-disjointly into ``(train_idx, val_idx)``, sorted int64 index arrays into
    ``labels``.

    ``folds == 0``: ``fraction * C`` (rounded half up) random classes go to validation; ``fraction == 0``
    gives an empty ``val_idx``. ``folds >= 2``: the classes of fold ``fold`` of :func:`class_folds`
    go to validation, the other folds' classes to training, and ``fraction`` is not used (the config
    keeps it at 1/folds). The choice of classes depends only on the set of class ids, the fraction or
    folds, and ``seed``. Both sides must keep at least two classes (retrieval with one class measures
    nothing).
    """
    labels = np.asarray(labels)
    all_idx = np.arange(len(labels), dtype=np.int64)
    if folds:
        if not 0 <= fold < folds:
            raise UserError(
                f"val_fold is {fold}; expected a fold number from 0 to {folds - 1} (val_folds {folds})"
            )
        in_val = np.isin(labels, class_folds(labels, folds, seed)[fold])
        return all_idx[~in_val], all_idx[in_val]
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction is {fraction}; expected a fraction of the training classes in [0, 1)")
    if seed < 0:
        raise UserError(f"val_seed is {seed}; expected an integer >= 0")
    if fraction == 0.0:
        return all_idx, np.empty(0, dtype=np.int64)
    classes = np.unique(labels)
    n_val = int(fraction * len(classes) + 0.5)  # round half up
    if n_val < MIN_SPLIT_CLASSES or len(classes) - n_val < MIN_SPLIT_CLASSES:
        raise UserError(
            f"val_fraction {fraction} of {len(classes)} training classes gives {n_val} validation and "
            f"{len(classes) - n_val} training classes; each side needs at least {MIN_SPLIT_CLASSES}: "
            "choose another val_fraction"
        )
    val_classes = np.random.default_rng(seed).choice(classes, size=n_val, replace=False)
    in_val = np.isin(labels, val_classes)
    return all_idx[~in_val], all_idx[in_val]
