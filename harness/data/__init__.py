"""Datasets for the benchmark: build_splits(name, root, ...) -> DatasetSplits, plus the batch sampler.

Real benchmarks (``cub``, ``cars``, ``sop``, ``inshop``) are read from their official layout under a
data root (``root`` or ``$HARNESS_DATA``); ``glyphs`` is rendered by :mod:`harness.data.glyphs` into a
cache folder. See docs/data.md for the layouts, splits, transforms and sampling schemes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from harness.data.cars import CARS
from harness.data.cub import CUB
from harness.data.images import ImageDataset
from harness.data.inshop import INSHOP
from harness.data.official import DATA_ROOT_ENV, OfficialDataset, build_official_splits
from harness.data.sampler import (
    SAMPLERS,
    ClassBatchSampler,
    MPerClassBatchSampler,
    OfficialBatchSampler,
    build_batch_sampler,
)
from harness.data.sop import SOP
from harness.data.splits import DatasetSplits, LabelledDataset, class_folds, relabel, split_classes
from harness.data.transforms import CONVENTIONS, build_transform
from harness.errors import UserError, did_you_mean

OFFICIAL: dict[str, OfficialDataset] = {spec.name: spec for spec in (CUB, CARS, SOP, INSHOP)}
DATASETS: tuple[str, ...] = (*OFFICIAL, "glyphs")

__all__ = [
    "CONVENTIONS",
    "DATASETS",
    "DATA_ROOT_ENV",
    "SAMPLERS",
    "ClassBatchSampler",
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
    strict_counts: bool = True,
    crop_scale: Sequence[float] = (0.08, 1.0),
    resize_size: int | None = None,
    train_resize: bool = False,
    **glyph_options: Any,
) -> DatasetSplits:
    """Build the train / val / test (or query + gallery) datasets of benchmark ``name``.

    ``root``: the data root holding the dataset's official folder, or the dataset folder itself; None
    means ``$HARNESS_DATA``. ``strict_counts=False`` accepts image and class counts other than the
    official ones (subsets, test fixtures). ``val_fraction`` of the training classes (chosen with
    ``val_seed``) form ``val``; 0 gives ``val=None``; ``val_folds`` K >= 2 makes class fold
    ``val_fold`` of K the validation set instead (:func:`harness.data.splits.class_folds`).
    ``crop_scale``, ``resize_size`` and ``train_resize`` shape the transforms (see
    :func:`harness.data.transforms.build_transform`).
    ``glyphs`` ignores ``root``, ``strict_counts`` and the crop options; it renders into ``cache_dir``
    and receives ``image_size``, ``convention`` and ``glyph_options`` (other names are an error for the
    real datasets).
    """
    if image_size is None:  # each benchmark's own default: 32 px greyscale glyphs, 224 px BN-Inception input
        image_size = 32 if name == "glyphs" else 224
    if convention is None:
        convention = "grey" if name == "glyphs" else "bninception"
    if name == "glyphs":
        from harness.data.glyphs import build_glyph_splits

        check_options(name, glyph_options)
        return build_glyph_splits(
            cache_dir,
            val_fraction=val_fraction,
            val_seed=val_seed,
            val_folds=val_folds,
            val_fold=val_fold,
            image_size=image_size,
            convention=convention,
            **glyph_options,
        )
    if name not in OFFICIAL:
        raise UserError(f"unknown dataset {name!r}{did_you_mean(str(name).lower(), DATASETS)}")
    check_options(name, glyph_options)
    options = {"image_size": image_size, "crop_scale": crop_scale, "resize_size": resize_size}
    return build_official_splits(
        OFFICIAL[name],
        root,
        train_transform=build_transform(convention, train=True, train_resize=train_resize, **options),
        eval_transform=build_transform(convention, train=False, **options),
        val_fraction=val_fraction,
        val_seed=val_seed,
        val_folds=val_folds,
        val_fold=val_fold,
        strict_counts=strict_counts,
    )


OFFICIAL_OPTIONS = ("resize_size", "train_resize")
"""The ``data.options`` the real datasets take (keyword arguments of :func:`build_splits` for the transforms)."""


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise a one-line UserError for a ``data.options`` key dataset ``name`` does not take (a typo)."""
    if name == "glyphs":
        import inspect

        from harness.data.glyphs import build_glyph_splits

        given_by_fields = ("cache_dir", "val_fraction", "val_seed", "val_folds", "val_fold", "image_size")
        parameters = inspect.signature(build_glyph_splits).parameters
        accepted = [p for p in parameters if p not in (*given_by_fields, "convention")]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return  # a builder taking any keyword checks its own
    else:
        accepted = list(OFFICIAL_OPTIONS)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise UserError(
            f"unknown data option {unknown[0]!r} for dataset {name!r} (config data.options)"
            f"{did_you_mean(str(unknown[0]), accepted)}"
        )


def verify_images(splits: DatasetSplits, *, decode: bool = False, progress: bool = False) -> None:
    """Check every image file of ``splits`` is a non-empty file (``decode=True``: also decode each one, slow).

    :func:`build_splits` already checks the files; ``decode=True`` finds damaged or truncated files up
    front instead of mid-training (``progress``: a tqdm bar on a terminal). Raises a one-line DataError
    naming the first few bad files and how many there are.
    """
    for dataset in (splits.train, splits.val, splits.test, splits.query, splits.gallery):
        if isinstance(dataset, ImageDataset):
            dataset.verify(decode=decode, progress=progress)
