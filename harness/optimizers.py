"""The optimiser registry: ``@OPTIMIZERS.register()`` on a factory ``name(groups, settings) -> Optimizer``.

A factory receives the parameter groups (backbone and head, each with its own learning rate) and the
cell's ``optim`` settings; its docstring's first line is its summary. ``optim.name`` in an experiment
file is validated against these names. Adding an optimiser is one decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.config import OptimConfig

ParamGroups = list[dict[str, Any]]
OptimizerFactory = Callable[[ParamGroups, "OptimConfig"], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerEntry:
    """What the registry knows about one optimiser."""

    name: str
    summary: str
    factory: OptimizerFactory


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer", "optim.name", OptimizerEntry)
register_optimizer = OPTIMIZERS.register()
"""Register an optimiser factory under its function name (its docstring's first line is its summary)."""


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
