"""Image transforms of the paper's protocol and the input conventions of the backbones.

Training: random resized crop to ``image_size`` + horizontal flip. Evaluation: resize the shorter side to
``round(image_size / crop_pct)`` (``crop_pct`` 224/256: 256 for 224 crops) + centre crop to ``image_size``.
The result is a float tensor CxHxW in the backbone's convention:

- ``bninception``: BGR channel order, 0-255 range, minus the per-channel mean [104, 117, 128] (B, G, R).
- ``imagenet``: RGB, 0-1 range, minus mean [0.485, 0.456, 0.406], over std [0.229, 0.224, 0.225].
- ``grey``: one channel (luminance), 0-1 range, minus 0.5, over 0.5 (so in [-1, 1]).
- ``timm:<model>``: RGB, 0-1 range, with the mean, std, resize interpolation and crop fraction of the
  timm model's pretrained config (``timm.data.resolve_data_config``); for ``model.backbone: timm:<model>``.

These three are bilinear with ``crop_pct`` 224/256; a convention family (:data:`CONVENTION_FAMILIES`, a
name prefix) resolves the names of its members on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from harness.errors import UserError, did_you_mean

Transform = Callable[[object], torch.Tensor]


@dataclass(frozen=True)
class Convention:
    """How a backbone expects its input tensor."""

    channels: int
    bgr: bool
    value_range: float  # 1.0 or 255.0: what a full-intensity pixel is worth before normalisation
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # of the resizes (torchvision InterpolationMode value)
    crop_pct: float = 224 / 256  # evaluation: the centre crop's share of the resized shorter side
    input_size: int | None = None  # the image size the backbone was pretrained at, when it says


CONVENTIONS: dict[str, Convention] = {
    "bninception": Convention(3, True, 255.0, (104.0, 117.0, 128.0), (1.0, 1.0, 1.0)),
    "imagenet": Convention(3, False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "grey": Convention(1, False, 1.0, (0.5,), (0.5,)),
}


def timm_convention(model: str) -> Convention:
    """The input convention of timm model ``model`` (``arch`` or ``arch.tag``), from its pretrained config."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise UserError(f"input convention 'timm:{model}' needs the timm package: pip install timm") from None
    pretrained = timm.get_pretrained_cfg(model)
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict() if pretrained else None)
    channels, size, _ = cfg["input_size"]
    return Convention(
        channels,
        False,
        1.0,
        tuple(float(x) for x in cfg["mean"]),
        tuple(float(x) for x in cfg["std"]),
        interpolation=str(cfg["interpolation"]),
        crop_pct=float(cfg["crop_pct"]),
        input_size=int(size),
    )


CONVENTION_FAMILIES: dict[str, Callable[[str], Convention]] = {"timm:": timm_convention}
"""Name prefix -> the convention of a member (the name after the prefix), resolved once per process."""


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name`` (a family member is resolved and kept); UserError otherwise."""
    if name not in CONVENTIONS:
        for prefix, resolve in CONVENTION_FAMILIES.items():
            if str(name).startswith(prefix):
                CONVENTIONS[name] = resolve(name[len(prefix) :])
                break
        else:
            raise UserError(f"unknown input convention {name!r}{did_you_mean(str(name), CONVENTIONS)}")
    return CONVENTIONS[name]


class RescaleAndReorder:
    """Multiply a 0-1 tensor by ``value_range`` and, for BGR, reverse the channel order (picklable)."""

    def __init__(self, value_range: float, bgr: bool) -> None:
        self.value_range = value_range
        self.bgr = bgr

    def __call__(self, image: object) -> torch.Tensor:
        tensor = torch.as_tensor(image)
        if self.bgr:
            tensor = tensor.flip(-3)  # the channel axis of CxHxW, and of a NxCxHxW batch
        return tensor * self.value_range


def to_normalised_tensor(convention: str) -> list[Transform]:
    """The tail of every pipeline: PIL image -> float tensor in ``convention`` (see the module docstring)."""
    spec = get_convention(convention)
    steps: list[Transform] = []
    if spec.channels == 1:
        steps.append(v2.Grayscale(num_output_channels=1))
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.ToPureTensor(),
        RescaleAndReorder(spec.value_range, spec.bgr),
        v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
    ]
    return steps


def to_display_image(image: torch.Tensor, convention: str) -> np.ndarray:
    """The inverse of :func:`to_normalised_tensor`'s steps: a CxHxW tensor in ``convention`` as an RGB (or,
    for one channel, greyscale HxW) float array in [0, 1], to draw what the model was shown."""
    spec = get_convention(convention)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    pixels = (image.detach().cpu().float() * std + mean) / spec.value_range
    if spec.bgr:
        pixels = pixels.flip(0)
    shown = pixels.clamp(0.0, 1.0).numpy()
    return shown[0] if spec.channels == 1 else np.transpose(shown, (1, 2, 0))


def eval_resize_size(image_size: int, crop_pct: float = 224 / 256) -> int:
    """Shorter-side size before the centre crop of ``crop_pct``: 256 for 224 crops at the default 224/256."""
    return round(image_size / crop_pct)


def build_transform(
    convention: str,
    image_size: int = 224,
    *,
    train: bool,
    crop_scale: Sequence[float] = (0.08, 1.0),
    resize_size: int | None = None,
    train_resize: bool = False,
) -> Transform:
    """The training (``train=True``) or evaluation transform: PIL RGB image -> tensor CxHxW.

    ``crop_scale``: area range of the training RandomResizedCrop. ``resize_size``: shorter side before
    cropping (default :func:`eval_resize_size` with the convention's ``crop_pct``); the resizes use the
    convention's interpolation. ``train_resize``: also resize to ``resize_size``
    before the training crop. The official MS-loss code's variant is ``image_size=227,
    resize_size=256, crop_scale=(0.16, 1.0), train_resize=True``.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size is {image_size!r}; expected a positive number of pixels such as 224")
    low, high = (float(x) for x in crop_scale)
    if not 0.0 < low <= high <= 1.0:
        raise UserError(
            f"crop_scale is {tuple(crop_scale)!r}; expected (low, high) with 0 < low <= high <= 1"
        )
    spec = get_convention(convention)
    resize = eval_resize_size(image_size, spec.crop_pct) if resize_size is None else resize_size
    if not isinstance(resize, int) or resize < image_size:
        raise UserError(f"resize_size is {resize!r}; expected an integer >= image_size ({image_size})")
    mode = v2.InterpolationMode(spec.interpolation)
    steps: list[Transform]
    if train:
        steps = [v2.Resize(resize, interpolation=mode, antialias=True)] if train_resize else []
        steps += [
            v2.RandomResizedCrop(image_size, scale=(low, high), interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + to_normalised_tensor(convention))
