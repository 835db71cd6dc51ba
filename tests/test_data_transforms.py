"""Transforms: output shape, value range, channel order per convention, crop options, bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from harness.data.transforms import CONVENTIONS, build_transform, eval_resize_size, to_display_image
from harness.errors import UserError

RED = (255, 0, 0)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (50, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise_image(seed: int = 0, size: tuple[int, int] = (60, 45)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_dtype(convention: str, train: bool) -> None:
    out = build_transform(convention, 32, train=train)(noise_image())
    channels = CONVENTIONS[convention].channels
    assert type(out) is torch.Tensor
    assert out.dtype == torch.float32
    assert out.shape == (channels, 32, 32)


@pytest.mark.parametrize("train", [True, False])
def test_bninception_is_bgr_0_255_minus_mean(train: bool) -> None:
    out = build_transform("bninception", 24, train=train)(solid(RED))
    assert torch.allclose(out[:, 5, 5], torch.tensor([0 - 104.0, 0 - 117.0, 255 - 128.0]))
    full = build_transform("bninception", 24, train=train)(noise_image())
    assert full.min() >= -128 and full.max() <= 255 - 104
    assert full.max() - full.min() > 50, "values span the 0-255 range, not 0-1"


def test_imagenet_is_rgb_mean_std() -> None:
    out = build_transform("imagenet", 24, train=False)(solid(RED))
    expected = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    assert torch.allclose(out[:, 3, 3], expected, atol=1e-5)


def test_grey_is_one_channel_in_minus_one_to_one() -> None:
    out = build_transform("grey", 24, train=False)(solid(RED))
    luminance = 76 / 255  # PIL's L = 0.299 R + 0.587 G + 0.114 B, rounded
    assert torch.allclose(out[0, 0, 0], torch.tensor((luminance - 0.5) / 0.5), atol=1e-3)
    assert build_transform("grey", 24, train=False)(noise_image()).abs().max() <= 1.0


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_display_image_inverts_the_convention(convention: str) -> None:
    image = noise_image(size=(24, 24))
    shown = to_display_image(build_transform(convention, 24, train=False, resize_size=24)(image), convention)
    pixels = np.asarray(image.convert("L" if CONVENTIONS[convention].channels == 1 else "RGB")) / 255.0
    assert shown.shape == pixels.shape and shown.min() >= 0.0 and shown.max() <= 1.0
    assert np.abs(shown - pixels).max() < 1e-5  # RGB order back, 0-1 range, mean and std undone


def test_eval_is_deterministic_centre_crop_and_train_is_random() -> None:
    image = noise_image()
    evaluate = build_transform("imagenet", 32, train=False)
    assert torch.equal(evaluate(image), evaluate(image))
    torch.manual_seed(0)
    train = build_transform("imagenet", 32, train=True)
    assert not torch.equal(train(image), train(image))
    # centre crop: a 64x37 image resized to shorter side 37 stays 64x37; the crop is its middle 32x32
    stripes = Image.fromarray(np.repeat(np.arange(64, dtype=np.uint8)[None, :, None] * 4, 37, 0).repeat(3, 2))
    centre = build_transform("bninception", 32, train=False)(stripes)
    assert centre[2, 0, 0] == 16 * 4 - 128 and centre[2, 0, -1] == 47 * 4 - 128


def test_resize_follows_the_256_over_224_rule() -> None:
    assert eval_resize_size(224) == 256
    assert eval_resize_size(227) == 259
    assert eval_resize_size(112) == 128


def test_official_code_variant_is_expressible() -> None:
    transform = build_transform(
        "bninception", 227, train=True, crop_scale=(0.16, 1.0), resize_size=256, train_resize=True
    )
    steps = transform.transforms
    assert isinstance(steps[0], v2.Resize) and steps[0].size == [256]
    crop = next(step for step in steps if isinstance(step, v2.RandomResizedCrop))
    assert crop.scale == (0.16, 1.0) and list(crop.size) == [227, 227]
    assert transform(noise_image(size=(300, 260))).shape == (3, 227, 227)
    default = build_transform("bninception", 224, train=True).transforms
    assert isinstance(default[0], v2.RandomResizedCrop) and default[0].scale == (0.08, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"convention": "bninceptoin"}, "did you mean 'bninception'"),
        ({"image_size": 0}, "image_size"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"resize_size": 16}, "resize_size"),
    ],
)
def test_bad_options_raise_user_errors(kwargs: dict, message: str) -> None:
    options = {"convention": "imagenet", "image_size": 32, **kwargs}
    with pytest.raises(UserError, match=message):
        build_transform(options.pop("convention"), options.pop("image_size"), train=True, **options)
