"""A small convolutional backbone for the embedded glyphs benchmark, fast enough to train on 2 CPU cores.

:class:`SmallCNN` maps ``(n, in_channels, H, W)`` images to ``(n, out_features)`` pooled features; the
trainer adds the Linear embedding head and the L2 normalisation. Five 3x3 conv-BatchNorm-ReLU blocks
halve the resolution three times, starting with the first block, then global average pooling:

=====  =========  ======  ===========================
block  channels   stride  output for a 32 x 32 input
=====  =========  ======  ===========================
1      w          2       16 x 16
2      2w         2       8 x 8
3      2w         1       8 x 8
4      4w         2       4 x 4
5      4w         1       4 x 4
=====  =========  ======  ===========================

``out_features == 4 * width``. Trained from scratch (no pretrained weights); deterministic on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import UserError
from harness.models.registry import BackboneOptions, register_backbone

# (channels as a multiple of width, stride) of each block
LAYOUT: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (2, 1), (4, 2), (4, 1))


def _block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks (:data:`LAYOUT`) and global average pooling; ``out_features = 4 * width``."""

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise UserError(
                f"small_cnn: in_channels {in_channels} and model.width {width} must be positive integers"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for multiple, stride in LAYOUT:
            layers += _block(channels, multiple * width, stride)
            channels = multiple * width
        self.features = nn.Sequential(*layers)
        self.out_features = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(2, 3))


@register_backbone(convention="grey")
def small_cnn(options: BackboneOptions) -> tuple[nn.Module, int]:
    """A small CNN trained from scratch (no pretrained weights), for the greyscale glyphs benchmark."""
    if options.pretrained:
        raise UserError("model.pretrained: small_cnn has no pretrained weights; set model.pretrained: false")
    cnn = SmallCNN(in_channels=options.in_channels, width=options.width)
    return cnn, cnn.out_features
