"""The backbone registry: ``@register_backbone`` next to each backbone's factory, looked up by name.

A factory is a function ``name(options: BackboneOptions) -> (feature extractor, feature size)`` with a
one-line docstring; the extractor maps ``(n, C, H, W)`` images to ``(n, features)``. Its registration
records the input convention the data pipeline must apply (see ``harness.data.CONVENTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from harness.errors import UserError, did_you_mean


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
    convention: str
    summary: str
    factory: BackboneFactory


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(*, convention: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a backbone factory under its function name, with the input convention its images need."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        name = factory.__name__
        if name in BACKBONES:
            raise RuntimeError(f"backbone {name!r} is registered twice")
        summary = (factory.__doc__ or "").strip().split("\n", 1)[0]
        BACKBONES[name] = BackboneEntry(name, convention, summary, factory)
        return factory

    return decorate


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of backbone ``name``; an unknown name is one line naming the close matches."""
    if name not in BACKBONES:
        raise UserError(f"model.backbone: unknown backbone {name!r}{did_you_mean(name, sorted(BACKBONES))}")
    return BACKBONES[name]
