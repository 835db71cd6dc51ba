"""SmallCNN, the glyphs benchmark's backbone: output shape, gradient flow, determinism, model wiring."""

from __future__ import annotations

import pytest
import torch

from harness.errors import UserError
from harness.models.small_cnn import SmallCNN


@pytest.mark.parametrize(("in_channels", "width", "size"), [(1, 32, 32), (1, 8, 32), (3, 4, 48), (1, 8, 16)])
def test_output_is_pooled_features(in_channels: int, width: int, size: int) -> None:
    net = SmallCNN(in_channels=in_channels, width=width)
    assert net.out_features == 4 * width
    out = net(torch.randn(5, in_channels, size, size))
    assert out.shape == (5, net.out_features) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = SmallCNN(width=8)
    net(torch.randn(6, 1, 32, 32)).pow(2).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_deterministic_on_cpu() -> None:
    images = torch.randn(4, 1, 32, 32)
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        net = SmallCNN(width=8)
        loss = net(images).sum()
        loss.backward()
        outputs.append((net(images).detach(), net.features[0].weight.grad.clone()))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    torch.manual_seed(8)
    assert not torch.equal(SmallCNN(width=8)(images).detach(), outputs[0][0])


def test_builds_as_the_small_cnn_backbone() -> None:
    from harness.models import build_model

    model = build_model("small_cnn", 64, pretrained=False, in_channels=1, width=8)
    assert isinstance(model.backbone, SmallCNN)
    assert model.head.in_features == 32
    embeddings = model(torch.randn(3, 1, 32, 32))
    assert embeddings.shape == (3, 64)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_bad_width_is_a_user_error() -> None:
    with pytest.raises(UserError, match="width"):
        SmallCNN(width=0)
