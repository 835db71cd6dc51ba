"""The ImageNet backbones (BN-Inception, ResNet-50) as registered feature extractors, and their weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from harness.errors import DataError, UserError
from harness.models.registry import BackboneOptions, register_backbone
from harness.models.weights import (
    BNINCEPTION_FILE,
    RESNET50_FILES,
    STANDARD_WEIGHTS,
    ensure_weights,
    torch_hub_checkpoints,
)

if TYPE_CHECKING:
    from pretrainedmodels.models.bninception import BNInception
    from torchvision.models import ResNet


class GlobalPool(nn.Module):
    """Global max or average pooling to a flat vector."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ("max", "avg"):
            raise UserError(f"model.pooling: {kind!r} is not a pooling; expected 'max' or 'avg'")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.amax(dim=(2, 3)) if self.kind == "max" else x.mean(dim=(2, 3))).flatten(1)


class Features(nn.Module):
    """A convolutional trunk followed by global pooling."""

    def __init__(self, trunk: nn.Module, pool: GlobalPool) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(x))


class _BNInceptionTrunk(nn.Module):
    def __init__(self, net: BNInception) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


class _ResNetTrunk(nn.Module):
    def __init__(self, net: ResNet) -> None:
        super().__init__()
        net.fc = nn.Identity()
        net.avgpool = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


BN_COUNTER = ".num_batches_tracked"  # BatchNorm buffer added in PyTorch 0.4.1; older files lack it


def load_state_file(module: nn.Module, path: Path, *, what: str, hint: str) -> None:
    """Load a state dict from a local file into ``module`` as torch's strict loading does,
    or fail in one line.

    Every tensor of the model must be in the file with its shape, and nothing else may be; only the
    BatchNorm ``num_batches_tracked`` counters may be absent (files saved before PyTorch 0.4.1, such as
    the official BN-Inception file): they keep their initial value, as torch's own loading leaves them.
    """
    if not path.is_file():
        raise DataError(
            f"{what} pretrained weights not found at {path}; {hint}, or set model.pretrained: false"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user-fixable data problem
        raise DataError(
            f"{what} weights file {path} is unreadable ({type(err).__name__}); replace it"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{what} weights file {path} holds no state dict (names -> tensors); {hint}")
    own = module.state_dict()
    mismatches = _mismatches(own, state)
    if mismatches:
        raise DataError(
            f"{what} weights file {path} does not match the model ({'; '.join(mismatches)}); {hint}"
        )
    counters = {k: own[k] for k in own if k.endswith(BN_COUNTER) and k not in state}
    module.load_state_dict({**counters, **state}, strict=True)


def _mismatches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading into a model with state dict ``own``, one phrase per kind."""
    missing = [k for k in own if k not in state and not k.endswith(BN_COUNTER)]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    found = []
    if missing:
        found.append(f"{len(missing)} missing, e.g. {missing[0]!r}")
    if unexpected:
        found.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    if reshaped:
        k = reshaped[0]
        found.append(
            f"{len(reshaped)} of another shape, e.g. {k!r} {tuple(state[k].shape)} "
            f"instead of {tuple(own[k].shape)}"
        )
    return found


def _rgb_only(name: str, options: BackboneOptions) -> None:
    if options.in_channels != 3:
        raise UserError(
            f"model.backbone: {name!r} takes 3-channel images but the dataset has {options.in_channels}; "
            "use backbone small_cnn for the greyscale glyphs benchmark"
        )


@register_backbone(convention="bninception")
def bninception(options: BackboneOptions) -> tuple[nn.Module, int]:
    """BN-Inception (pretrainedmodels), ImageNet weights (downloaded once if missing), max or mean pooling."""
    import pretrainedmodels

    _rgb_only("bninception", options)
    net = pretrainedmodels.bninception(num_classes=1000, pretrained=None)
    if options.pretrained:
        path = (
            Path(options.weights).expanduser()
            if options.weights
            else ensure_weights(STANDARD_WEIGHTS["bninception"])
        )
        load_state_file(
            net,
            path,
            what="BN-Inception",
            hint=f"put the pretrainedmodels file {BNINCEPTION_FILE} there or give model.weights",
        )
    net.last_linear = nn.Identity()
    return Features(_BNInceptionTrunk(net), GlobalPool(options.pooling)), 1024


@register_backbone(convention="imagenet")
def resnet50(options: BackboneOptions) -> tuple[nn.Module, int]:
    """ResNet-50 (torchvision), ImageNet weights from torch's cache (downloaded once if missing), pooling."""
    import torchvision

    _rgb_only("resnet50", options)
    net = torchvision.models.resnet50(weights=None)
    if options.pretrained:
        path = (
            Path(options.weights).expanduser()
            if options.weights
            else ensure_weights(STANDARD_WEIGHTS["resnet50"])
        )
        load_state_file(
            net,
            path,
            what="ResNet-50",
            hint=f"put torchvision's {RESNET50_FILES[0]} (or {RESNET50_FILES[1]}) in "
            f"{torch_hub_checkpoints()} or give model.weights",
        )
    return Features(_ResNetTrunk(net), GlobalPool(options.pooling)), 2048
