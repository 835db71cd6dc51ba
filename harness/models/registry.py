"""The backbone registry: ``@register_backbone(convention=...)`` next to each backbone's factory.

A factory is a function ``name(options: BackboneOptions) -> (feature extractor, feature size)`` with a
one-line docstring; the extractor maps ``(n, C, H, W)`` images to ``(n, features)``. Its registration
records the input convention the data pipeline must apply (see ``harness.data.CONVENTIONS``).

A backbone *family* (:data:`BACKBONE_FAMILIES`) names many backbones by a prefix, such as ``timm:`` for
every timm model: :func:`backbone_entry` asks the family for the entry of ``prefix + member`` on first
use and keeps it (apart from :data:`BACKBONES`, which lists the registered backbones only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from harness.errors import UserError
from harness.registry import Registry


@dataclass(frozen=True)
class BackboneOptions:
    """What a backbone factory is given: the cell's ``model`` settings and the dataset's channel count."""

    pretrained: bool = False
    weights: str | None = None
    pooling: str = "max"
    in_channels: int = 3
    width: int = 32
    image_size: int | None = None  # the training crop (``data.image_size``), for backbones that need it


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


BackboneFamily = Callable[[str], BackboneEntry]
"""The entry of one member of a family (the name after the prefix); ValueError for an unknown member."""

BACKBONE_FAMILIES: dict[str, BackboneFamily] = {}
_MEMBERS: dict[str, BackboneEntry] = {}  # the family members used in this process (not in BACKBONES)


def register_backbone_family(prefix: str) -> Callable[[BackboneFamily], BackboneFamily]:
    """Register the function giving the entry of every backbone named ``prefix + member``."""

    def decorate(family: BackboneFamily) -> BackboneFamily:
        BACKBONE_FAMILIES[prefix] = family
        return family

    return decorate


def _family_entry(name: str) -> BackboneEntry | None:
    """The entry of ``name`` when a family's prefix starts it, else None (it is then a registered name)."""
    if name in _MEMBERS:
        return _MEMBERS[name]
    for prefix, family in BACKBONE_FAMILIES.items():
        if name.startswith(prefix):
            _MEMBERS[name] = family(name[len(prefix) :])
            return _MEMBERS[name]
    return None


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of backbone ``name``; an unknown name is one line naming the close matches."""
    try:
        found = _family_entry(name)
    except ValueError as err:
        raise UserError(f"{BACKBONES.where}: {err}") from None
    return found if found is not None else BACKBONES.lookup(name)


def check_backbone(name: str) -> str:
    """``name`` when it is a registered backbone or a known family member, else ValueError (for pydantic)."""
    return name if _family_entry(name) is not None else BACKBONES.check(name)
