"""What a cell is built from: its dataset splits, embedding model, optimiser and learning-rate schedule.

The entry points (run, tune, benchmarks) and the trainer share these builders. Datasets come from the
registry :data:`harness.data.DATASETS`, backbones from :data:`harness.models.BACKBONES`, optimisers from
:data:`harness.optimizers.OPTIMIZERS` (re-exported here with :func:`register_optimizer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness import models
from harness.config import data_root
from harness.data import DatasetSplits, build_splits
from harness.optimizers import OPTIMIZERS, OptimizerEntry, register_optimizer

if TYPE_CHECKING:
    from harness.config import CellConfig

__all__ = [
    "OPTIMIZERS",
    "OptimizerEntry",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "load_splits",
    "register_optimizer",
]

_SPLITS_CACHE: dict[str, DatasetSplits] = {}


def load_splits(cfg: CellConfig) -> DatasetSplits:
    """The dataset splits of a cell (cached per dataset and data settings within one process)."""
    convention = models.backbone_entry(cfg.model.backbone).convention
    key = repr((cfg.dataset, data_root(cfg), convention, cfg.data.model_dump()))
    if key not in _SPLITS_CACHE:
        _SPLITS_CACHE[key] = build_splits(
            cfg.dataset,
            data_root(cfg),
            image_size=cfg.data.image_size,
            convention=convention,
            val_fraction=cfg.data.val_fraction,
            val_seed=cfg.data.val_seed,
            val_folds=cfg.data.val_folds,
            val_fold=cfg.data.val_fold,
            cache_dir=cfg.data.cache_dir,
            decoded_cache=cfg.data.decoded_cache,
            strict_counts=cfg.data.strict_counts,
            crop_scale=tuple(cfg.data.crop_scale),
            **cfg.data.options,
        )
    return _SPLITS_CACHE[key]


def build_model(cfg: CellConfig, in_channels: int) -> models.EmbeddingModel:
    """The embedding model a cell trains, for images with ``in_channels`` channels."""
    return models.build_model(
        cfg.model.backbone,
        cfg.embedding_size,
        pretrained=cfg.model.pretrained,
        weights=cfg.model.weights,
        pooling=cfg.model.pooling,
        in_channels=in_channels,
        width=cfg.model.width,
        image_size=cfg.data.image_size,
    )


def build_optimizer(cfg: CellConfig, model: models.EmbeddingModel) -> torch.optim.Optimizer:
    """The cell's optimiser (``optim.name``) with separate learning rates for backbone and head."""
    entry = OPTIMIZERS.lookup(cfg.optim.name)
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": cfg.optim.lr_backbone},
        {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": cfg.optim.lr_head},
    ]
    return entry.factory(groups, cfg.optim)


def build_schedule(cfg: CellConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The step schedule: every learning rate times ``schedule.gamma`` at each milestone iteration."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.schedule.milestones), gamma=cfg.schedule.gamma
    )
