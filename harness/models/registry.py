"""The backbone registry: ``@register_backbone(convention=...)`` next to each backbone's factory.

A factory is a function ``name(options: BackboneOptions) -> (feature extractor, feature size)`` with a
one-line docstring; the extractor maps ``(n, C, H, W)`` images to ``(n, features)``. Its registration
records the input convention the data pipeline must apply (see ``harness.data.CONVENTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from harness.registry import Registry


@dataclass(frozen=True)
class BackboneOptions:
    """What a backbone factory is given: the cell's ``model`` settings and the dataset's channel count."""

    pretrained: bool = False
    weights: str | None = None
    pooling: str = "max"
    in_channels: int = 3
    width: int = 32


BackboneFactory = Callable[[BackboneOptions], tuple[nn.Module, int]]


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows about one backbone."""

    name: str
    summary: str
    factory: BackboneFactory
    convention: str


BACKBONES: Registry[BackboneEntry] = Registry("backbone", "model.backbone", BackboneEntry)


def register_backbone(*, convention: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a backbone factory under its function name, with the input convention its images need."""
    return BACKBONES.register(convention=convention)


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of backbone ``name``; an unknown name is one line naming the close matches."""
    return BACKBONES.lookup(name)
