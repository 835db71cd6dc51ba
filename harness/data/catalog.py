"""The registered benchmarks, in the paper's order: CUB, Cars, SOP, In-Shop (official files), then glyphs.

Importing this module fills :data:`harness.data.registry.DATASETS`. An official benchmark is entered
from its :class:`~harness.data.official.OfficialDataset` spec; any other dataset is one function
decorated with ``@DATASETS.register(...)``, as ``glyphs`` is here. The glyph renderer (matplotlib) is
imported only when glyphs are built.
"""

from __future__ import annotations

import numpy as np

from harness.data.cars import CARS
from harness.data.cub import CUB
from harness.data.inshop import INSHOP
from harness.data.official import OfficialDataset, register_official
from harness.data.registry import DATASETS, DatasetRequest
from harness.data.sop import SOP
from harness.data.splits import DatasetSplits

OFFICIAL: dict[str, OfficialDataset] = {spec.name: spec for spec in (CUB, CARS, SOP, INSHOP)}
for _spec in OFFICIAL.values():
    register_official(_spec)

GLYPH_OPTIONS = {
    "seed": 0,
    "num_classes": 400,
    "instances_per_class": 64,
    "min_fonts": 16,
    "jitter": 1.0,
    "train_shift": 2,
}
"""The ``data.options`` of glyphs with their defaults: the keyword arguments of
:func:`harness.data.glyphs.build_glyph_splits` beyond the common data settings."""


def _glyph_train_classes(request: DatasetRequest) -> np.ndarray:
    """The first half of the classes trains (one id per class: no image needs rendering to count them)."""
    return np.arange(int(request.options.get("num_classes", GLYPH_OPTIONS["num_classes"])) // 2)


@DATASETS.register(
    title="glyphs (synthetic, no paper numbers)",
    eval_mode="leave_one_out",
    default_ks=(1, 2, 4, 8, 16, 32),
    image_size=32,
    convention="grey",
    options=GLYPH_OPTIONS,
    train_classes=_glyph_train_classes,
)
def glyphs(request: DatasetRequest) -> DatasetSplits:
    """Unicode characters rendered from matplotlib's fonts into a cache folder (``data.cache_dir``)."""
    from harness.data.glyphs import build_glyph_splits

    return build_glyph_splits(
        request.cache_dir,
        val_fraction=request.val_fraction,
        val_seed=request.val_seed,
        val_folds=request.val_folds,
        val_fold=request.val_fold,
        image_size=request.image_size,
        convention=request.convention,
        **request.options,
    )
