"""The dataset registry: each benchmark's builder with its title, evaluation mode, default K and options.

A builder is a function ``name(request: DatasetRequest) -> DatasetSplits`` (its docstring's first line
is its summary). :func:`harness.data.build_splits` looks the name up, fills the benchmark's default image
size and convention, refuses a ``data.options`` key the benchmark does not declare (one line, with the
close matches) and calls the builder. Preflight and the report read the entries too: the training
classes without opening an image, and the title.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from harness.data.splits import DatasetSplits


@dataclass(frozen=True, kw_only=True)
class DatasetRequest:
    """What a dataset builder is given: a cell's data settings, its options checked against the entry's."""

    root: str | os.PathLike[str] | None
    image_size: int
    convention: str
    val_fraction: float = 0.0
    val_seed: int = 0
    val_folds: int = 0
    val_fold: int = 0
    cache_dir: str | os.PathLike[str] | None = None
    # Read the official benchmarks from a pre-decoded image cache; "fast": with torch's crops.
    decoded_cache: bool | str = False
    strict_counts: bool = True
    crop_scale: tuple[float, ...] = (0.08, 1.0)
    options: Mapping[str, Any] = field(default_factory=dict)  # only those given: defaults are the builder's


DatasetBuilder = Callable[[DatasetRequest], "DatasetSplits"]


@dataclass(frozen=True, kw_only=True)
class DatasetEntry:
    """What the registry knows about one benchmark.

    ``title``: its name in messages and the report. ``image_size`` and ``convention``: the defaults when
    the caller gives none. ``options``: the ``data.options`` keys it takes, with their defaults.
    ``train_classes(request)``: the original class id of each training image (before the validation
    split), found without opening an image, for the preflight checks.
    """

    name: str
    summary: str
    factory: DatasetBuilder
    title: str
    eval_mode: str
    default_ks: tuple[int, ...]
    image_size: int
    convention: str
    options: Mapping[str, Any]
    train_classes: Callable[[DatasetRequest], np.ndarray]


DATASETS: Registry[DatasetEntry] = Registry("dataset", "dataset", DatasetEntry)
