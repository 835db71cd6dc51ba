"""What a cell is built from: its dataset splits, embedding model, optimiser and learning-rate schedule.

The entry points (run, tune, benchmarks) and the trainer share these builders. Backbones come from
the registry :data:`harness.models.BACKBONES`; optimisers from :data:`OPTIMIZERS`, filled by
:func:`register_optimizer` (a factory ``name(groups, settings) -> Optimizer`` with a one-line
docstring). Adding an optimiser is one decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness import models
from harness.data import DatasetSplits, build_splits
from harness.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from harness.config import CellConfig, OptimConfig

ParamGroups = list[dict[str, Any]]
OptimizerFactory = Callable[[ParamGroups, "OptimConfig"], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerEntry:
    """What the registry knows about one optimiser."""

    name: str
    summary: str
    factory: OptimizerFactory


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register_optimizer(factory: OptimizerFactory) -> OptimizerFactory:
    """Register an optimiser factory under its function name (its docstring's first line is its summary)."""
    name = factory.__name__
    if name in OPTIMIZERS:
        raise RuntimeError(f"optimizer {name!r} is registered twice")
    OPTIMIZERS[name] = OptimizerEntry(name, (factory.__doc__ or "").strip().split("\n", 1)[0], factory)
    return factory


@register_optimizer
def adam(groups: ParamGroups, settings: OptimConfig) -> torch.optim.Optimizer:
    """Adam (the paper's optimiser); weight decay is added to the gradients (L2), as in the official code."""
    return torch.optim.Adam(groups, weight_decay=settings.weight_decay)


@register_optimizer
def adamw(groups: ParamGroups, settings: OptimConfig) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay."""
    return torch.optim.AdamW(groups, weight_decay=settings.weight_decay)


@register_optimizer
def sgd(groups: ParamGroups, settings: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum ``optim.momentum``."""
    return torch.optim.SGD(groups, momentum=settings.momentum, weight_decay=settings.weight_decay)


_SPLITS_CACHE: dict[str, DatasetSplits] = {}


def load_splits(cfg: CellConfig) -> DatasetSplits:
    """The dataset splits of a cell (cached per dataset and data settings within one process)."""
    from harness.config import data_root

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
    )


def build_optimizer(cfg: CellConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The cell's optimiser (``optim.name``) with separate learning rates for backbone and head."""
    name = cfg.optim.name
    if name not in OPTIMIZERS:
        raise UserError(f"optim.name: unknown optimizer {name!r}{did_you_mean(name, sorted(OPTIMIZERS))}")
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": cfg.optim.lr_backbone},
        {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": cfg.optim.lr_head},
    ]
    return OPTIMIZERS[name].factory(groups, cfg.optim)


def build_schedule(cfg: CellConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The step schedule: every learning rate times ``schedule.gamma`` at each milestone iteration."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.schedule.milestones), gamma=cfg.schedule.gamma
    )
