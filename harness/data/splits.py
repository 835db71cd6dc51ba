"""The split container every dataset builder returns, and the class-disjoint validation split.

:class:`DatasetSplits` is the contract between the data builders and the trainer (see
docs/ARCHITECTURE.md). :func:`split_classes` carves a validation set out of the training classes;
:func:`relabel` maps original class ids onto 0..C-1.
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
    ``eval_mode == "query_gallery"``: ``query`` and ``gallery`` are set (sharing one label space), ``test`` is None.
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


def split_classes(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices class-disjointly: ``fraction * C`` (rounded half up) random classes go to validation.

    Returns ``(train_idx, val_idx)``, sorted int64 index arrays into ``labels``. ``fraction == 0`` gives
    an empty ``val_idx``. The choice of classes depends only on the set of class ids, ``fraction`` and
    ``seed``. Both sides must keep at least two classes (retrieval with one class measures nothing).
    """
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction is {fraction}; expected a fraction of the training classes in [0, 1)")
    if seed < 0:
        raise UserError(f"val_seed is {seed}; expected an integer >= 0")
    all_idx = np.arange(len(labels), dtype=np.int64)
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
