"""Embedding models: a backbone, global pooling, a Linear head and L2 normalisation.

``build_model(backbone, embedding_size, ...)`` returns an :class:`EmbeddingModel` whose ``backbone``
and ``head`` submodules take separate learning rates. Backbones are registered in :data:`BACKBONES`
by a decorator next to each factory: ``bninception`` (pretrainedmodels, global max pooling as in the
official MS code, average pooling as an option), ``resnet50`` (torchvision) and ``small_cnn`` (for the
embedded glyphs benchmark), and every timm model as ``timm:<name>`` (``timm_models``, a backbone
family). Pretrained weights come from ``model.weights`` or the standard file in its cache, downloaded
and verified once when missing (:mod:`harness.models.weights`; a ``timm:`` backbone: timm's hub); a
file that cannot be had is one line saying where to put it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.models import backbones, small_cnn, timm_models  # noqa: F401  (importing them registers them)
from harness.models.registry import (
    BACKBONES,
    BackboneEntry,
    BackboneOptions,
    backbone_entry,
    check_backbone,
    register_backbone,
    register_backbone_family,
)


class EmbeddingModel(nn.Module):
    """``backbone -> pooled features -> Linear -> L2 norm``."""

    def __init__(self, backbone: nn.Module, features: int, embedding_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, embedding_size)
        nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(images)).float(), dim=1)


def build_model(
    backbone: str,
    embedding_size: int,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    pooling: str = "max",
    in_channels: int = 3,
    width: int = 32,
    image_size: int | None = None,
) -> EmbeddingModel:
    """Build an embedding model; ``weights`` overrides the default local pretrained-weights path."""
    entry = backbone_entry(backbone)
    options = BackboneOptions(
        pretrained=pretrained,
        weights=weights,
        pooling=pooling,
        in_channels=in_channels,
        width=width,
        image_size=image_size,
    )
    module, features = entry.factory(options)
    return EmbeddingModel(module, features, embedding_size)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model``: none in a ViT (its LayerNorms keep no running statistics)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics frozen; affine parameters still train).

    Only BatchNorm: on a model without it (a ViT) ``model.freeze_bn`` changes nothing.
    """
    for module in batchnorm_layers(model):
        module.eval()


__all__ = [
    "BACKBONES",
    "BackboneEntry",
    "BackboneOptions",
    "EmbeddingModel",
    "backbone_entry",
    "batchnorm_layers",
    "build_model",
    "check_backbone",
    "freeze_batchnorm_statistics",
    "register_backbone",
    "register_backbone_family",
]
