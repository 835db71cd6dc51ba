"""Datasets for the benchmark: build_splits(name, root, ...) -> DatasetSplits, plus the batch sampler.

Every benchmark is an entry of the registry :data:`DATASETS` (:mod:`harness.data.registry`, filled
by :mod:`harness.data.catalog`). Real benchmarks (``cub``, ``cars``, ``sop``, ``inshop``) are read
from their official layout under a data root (``root`` or ``$HARNESS_DATA``); ``glyphs`` is rendered
by :mod:`harness.data.glyphs` into a cache folder. See docs/data.md for the layouts, splits,
transforms and sampling schemes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from harness.data.catalog import OFFICIAL
from harness.data.decoded_cache import CachedImageDataset
from harness.data.images import ImageDataset
from harness.data.official import DATA_ROOT_ENV
from harness.data.registry import DATASETS, DatasetEntry, DatasetRequest
from harness.data.sampler import (
    SAMPLERS,
    ClassBatchSampler,
    MPerClassBatchSampler,
    OfficialBatchSampler,
    build_batch_sampler,
)
from harness.data.splits import DatasetSplits, LabelledDataset, class_folds, relabel, split_classes
from harness.data.transforms import CONVENTIONS, build_transform
from harness.errors import UserError, did_you_mean

__all__ = [
    "CONVENTIONS",
    "DATASETS",
    "DATA_ROOT_ENV",
    "OFFICIAL",
    "SAMPLERS",
    "CachedImageDataset",
    "ClassBatchSampler",
    "DatasetEntry",
    "DatasetRequest",
    "DatasetSplits",
    "ImageDataset",
    "LabelledDataset",
    "MPerClassBatchSampler",
    "OfficialBatchSampler",
    "build_batch_sampler",
    "build_splits",
    "build_transform",
    "check_options",
    "class_folds",
    "relabel",
    "split_classes",
    "verify_images",
]


def build_splits(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    convention: str | None = None,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    val_folds: int = 0,
    val_fold: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    decoded_cache: bool | str = False,
    strict_counts: bool = True,
    crop_scale: Sequence[float] = (0.08, 1.0),
    **options: Any,
) -> DatasetSplits:
    """Build the train / val / test (or query + gallery) datasets of benchmark ``name`` (in :data:`DATASETS`).

    ``root``: the data root holding the dataset's official folder, or the dataset folder itself; None
    means ``$HARNESS_DATA``. ``strict_counts=False`` accepts image and class counts other than the
    official ones (subsets, test fixtures). ``val_fraction`` of the training classes (chosen with
    ``val_seed``) form ``val``; 0 gives ``val=None``; ``val_folds`` K >= 2 makes class fold
    ``val_fold`` of K the validation set instead (:func:`harness.data.splits.class_folds`).
    ``image_size`` and ``convention`` default to the benchmark's own (224 px BN-Inception input for the
    official ones, 32 px greyscale for glyphs). ``options`` (config ``data.options``) are the keys the
    benchmark's registry entry declares: ``resize_size`` and ``train_resize`` for the official ones
    (see :func:`harness.data.transforms.build_transform`), the generator's settings for glyphs, which
    ignores ``root``, ``strict_counts``, ``crop_scale`` and ``decoded_cache`` and renders into ``cache_dir``.
    ``decoded_cache``: read the official benchmarks' images from a pre-decoded cache in ``cache_dir``,
    built on first use (:mod:`harness.data.decoded_cache`); ``"fast"``: its training crops resampled with
    torch's uint8 kernel instead of PIL.
    """
    if name not in DATASETS:
        raise UserError(DATASETS.unknown(name))
    entry = DATASETS[name]
    check_options(name, options)
    request = DatasetRequest(
        root=root,
        image_size=entry.image_size if image_size is None else image_size,
        convention=entry.convention if convention is None else convention,
        val_fraction=val_fraction,
        val_seed=val_seed,
        val_folds=val_folds,
        val_fold=val_fold,
        cache_dir=cache_dir,
        decoded_cache=decoded_cache,
        strict_counts=strict_counts,
        crop_scale=tuple(crop_scale),
        options=options,
    )
    return entry.factory(request)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise a one-line UserError for a ``data.options`` key the registry entry of ``name`` does not take."""
    entry = DATASETS[name]
    for key in options:
        if key not in entry.options:
            raise UserError(
                f"unknown data option {key!r} for dataset {name!r} (config data.options)"
                f"{did_you_mean(key, list(entry.options))}"
            )


def verify_images(splits: DatasetSplits, *, decode: bool = False, progress: bool = False) -> None:
    """Check every image file of ``splits`` is a non-empty file (``decode=True``: also decode each one, slow).

    :func:`build_splits` already checks the files; ``decode=True`` finds damaged or truncated files up
    front instead of mid-training (``progress``: a tqdm bar on a terminal). Raises a one-line DataError
    naming the first few bad files and how many there are.
    """
    for dataset in (splits.train, splits.val, splits.test, splits.query, splits.gallery):
        if isinstance(dataset, ImageDataset | CachedImageDataset):
            dataset.verify(decode=decode, progress=progress)
