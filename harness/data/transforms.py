"""Image transforms of the paper's protocol and the input conventions of the backbones.

Training: random resized crop to ``image_size`` + horizontal flip. Evaluation: resize the shorter side to
``round(image_size * 256 / 224)`` + centre crop to ``image_size``. The result is a float tensor CxHxW in
the backbone's convention:

- ``bninception``: BGR channel order, 0-255 range, minus the per-channel mean [104, 117, 128] (B, G, R).
- ``imagenet``: RGB, 0-1 range, minus mean [0.485, 0.456, 0.406], over std [0.229, 0.224, 0.225].
- ``grey``: one channel (luminance), 0-1 range, minus 0.5, over 0.5 (so in [-1, 1]).
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


CONVENTIONS: dict[str, Convention] = {
    "bninception": Convention(3, True, 255.0, (104.0, 117.0, 128.0), (1.0, 1.0, 1.0)),
    "imagenet": Convention(3, False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "grey": Convention(1, False, 1.0, (0.5,), (0.5,)),
}


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name``; UserError with the known names otherwise."""
    if name not in CONVENTIONS:
        raise UserError(f"unknown input convention {name!r}{did_you_mean(str(name), CONVENTIONS)}")
    return CONVENTIONS[name]


class _RescaleAndReorder:
    """Multiply a 0-1 tensor by ``value_range`` and, for BGR, reverse the channel order (picklable)."""

    def __init__(self, value_range: float, bgr: bool) -> None:
        self.value_range = value_range
        self.bgr = bgr

    def __call__(self, image: object) -> torch.Tensor:
        tensor = torch.as_tensor(image)
        if self.bgr:
            tensor = tensor.flip(0)
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
        _RescaleAndReorder(spec.value_range, spec.bgr),
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


def eval_resize_size(image_size: int) -> int:
    """Shorter-side size before the centre crop: 256 for 224 crops, scaled alike for other sizes."""
    return round(image_size * 256 / 224)


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
    cropping (default :func:`eval_resize_size`). ``train_resize``: also resize to ``resize_size``
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
    resize = eval_resize_size(image_size) if resize_size is None else resize_size
    if not isinstance(resize, int) or resize < image_size:
        raise UserError(f"resize_size is {resize!r}; expected an integer >= image_size ({image_size})")
    steps: list[Transform]
    if train:
        steps = [v2.Resize(resize, antialias=True)] if train_resize else []
        steps += [
            v2.RandomResizedCrop(image_size, scale=(low, high), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + to_normalised_tensor(convention))
