"""Pair-based deep metric learning losses as General Pair Weighting: a miner plus a pair weighting over S.

Public API: ``build(name, **hparams) -> GPWLoss`` (an ``nn.Module`` called as ``loss(embeddings,
labels)``), ``available()``, ``info(name)``; see docs/readme/losses.md for the registry table.
"""

from losses import zoo as _zoo  # noqa: F401  (registers the losses)
from losses.gpw import GPWLoss
from losses.registry import LossConfigError, LossInfo, available, build, info, register_loss

__all__ = ["GPWLoss", "LossConfigError", "LossInfo", "available", "build", "info", "register_loss"]
