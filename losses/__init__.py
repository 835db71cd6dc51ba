"""Pair-based deep metric learning losses as General Pair Weighting: a miner plus a pair weighting over S.

Public API: ``build(name, **hparams) -> GPWLoss`` (an ``nn.Module`` called as ``loss(embeddings,
labels)``), ``available()``, ``info(name)`` (label, equation, factory, search space), ``LossConfigError`` (a
``ValueError``) for a bad name or setting; see docs/losses.md for the registry table. The library
stands alone: it imports nothing from the harness.
"""

from losses import zoo as _zoo  # noqa: F401  (registers the losses)
from losses.gpw import GPWLoss
from losses.registry import LossConfigError, LossInfo, SearchParam, available, build, info, register_loss

__all__ = [
    "GPWLoss",
    "LossConfigError",
    "LossInfo",
    "SearchParam",
    "available",
    "build",
    "info",
    "register_loss",
]
