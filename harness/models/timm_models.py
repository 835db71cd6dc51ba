"""Any timm model as a backbone: ``model.backbone: timm:<name>`` (e.g. ``timm:resnet50``,
``timm:vit_small_patch16_224.dino``).

The model is ``timm.create_model(name, pretrained=..., num_classes=0, global_pool=model.pooling)``: its
classifier removed, its own global pooling kept (for a ViT: ``token`` the class token, ``avg`` and
``max`` the mean and maximum over the patch tokens). Its input convention is ``timm:<name>``: the
mean, std, interpolation and crop fraction of its pretrained config (``harness.data.transforms``).
Models that take a fixed input size (ViTs) are built for ``data.image_size``. Pretrained weights come
from timm's hub (cached by huggingface_hub) or, offline, from ``model.weights``; timm is an optional
dependency (``pip install timm``).
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from types import ModuleType

from torch import nn

from harness.errors import UserError
from harness.models.registry import BackboneEntry, BackboneOptions, register_backbone_family

PREFIX = "timm:"  # also the prefix of the input conventions in harness.data.transforms.CONVENTION_FAMILIES
INSTALL = "pip install timm (or the harness's extra: pip install 'gpw-harness[timm]')"


def _timm(name: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"{PREFIX}{name} needs the timm package, which is not installed: {INSTALL}"
        ) from None
    return timm


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(PREFIX + c) for c in close) + "?"
    return "; see timm.list_models() for the architectures and timm.list_pretrained() for the weights"


def check_name(name: str) -> None:
    """ValueError unless ``name`` is a timm architecture (``arch``) or a pretrained tag of one
    (``arch.tag``)."""
    timm = _timm(name)
    arch, _, tag = name.partition(".")
    architectures = timm.list_models()
    if arch not in architectures:
        raise ValueError(f"unknown timm model {PREFIX + name!r}{_close(arch, architectures)}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        raise ValueError(f"timm model {arch!r} has no pretrained weights {tag!r}{_close(name, tags)}")


def build(name: str, options: BackboneOptions) -> tuple[nn.Module, int]:
    """The timm model ``name`` without its classifier: ``(n, C, H, W)`` images to ``(n, features)``."""
    timm = _timm(name)
    kwargs: dict[str, object] = {
        "num_classes": 0,
        "global_pool": options.pooling,
        "in_chans": options.in_channels,
    }
    pretrained_cfg = timm.get_pretrained_cfg(name)
    if options.image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = options.image_size  # a ViT's position embeddings are made (and resampled) for it
    if options.pretrained and options.weights:
        path = Path(options.weights).expanduser()
        if not path.is_file():
            raise UserError(f"model.weights: {path} not found; give the file of {PREFIX}{name}'s weights")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        net = timm.create_model(name, pretrained=options.pretrained, **kwargs)
    except Exception as err:  # timm's and the hub's errors have many types; each case is the user's to fix
        found = f"{type(err).__name__}: {err}"
        if options.pretrained and not options.weights:
            todo = (
                f"its pretrained weights could not be loaded from timm's hub ({found}); run once online "
                "(huggingface_hub caches them), or give the downloaded file as model.weights, or set "
                "model.pretrained: false"
            )
        elif options.pretrained:
            todo = (
                f"model.weights {options.weights} does not load into it ({found}); "
                "give the file of its weights"
            )
        else:
            todo = f"it cannot be built with model.pooling {options.pooling!r} ({found}); try another pooling"
        raise UserError(f"model.backbone: {PREFIX}{name}: {todo}") from None
    return net, int(getattr(net, "head_hidden_size", None) or net.num_features)


@register_backbone_family(PREFIX)
def timm_entry(name: str) -> BackboneEntry:
    """The backbone entry of timm model ``name``: a timm feature extractor with its own input convention."""
    check_name(name)
    return BackboneEntry(
        name=PREFIX + name,
        summary=f"timm model {name} (its classifier removed, timm's own global pooling)",
        factory=functools.partial(build, name),
        convention=PREFIX + name,
    )
