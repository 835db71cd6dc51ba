"""Embedding models: shapes, L2 norm, pooling, frozen BN statistics, local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness.errors import DataError, UserError
from harness.models import (
    BACKBONES,
    BackboneOptions,
    build_model,
    freeze_batchnorm_statistics,
    register_backbone,
)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_bninception_embeds_to_unit_vectors(pooling: str) -> None:
    model = build_model("bninception", 64, pretrained=False, pooling=pooling).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert sum(p.numel() for p in model.head.parameters()) == 1024 * 64 + 64


def test_resnet50_and_small_cnn() -> None:
    resnet = build_model("resnet50", 32, pretrained=False).eval()
    with torch.no_grad():
        assert resnet(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    assert resnet.head.in_features == 2048
    cnn = build_model("small_cnn", 16, pretrained=False, in_channels=1, width=8)
    assert cnn(torch.randn(4, 1, 32, 32)).shape == (4, 16)


def test_missing_weights_file_is_one_line_saying_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build_model("bninception", 64, pretrained=True, weights=str(tmp_path / "bn_inception.pth"))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "bn_inception.pth") in message
    assert "model.pretrained: false" in message
    with pytest.raises(DataError, match="ResNet-50 pretrained weights not found"):
        build_model("resnet50", 64, pretrained=True, weights=str(tmp_path / "r50.pth"))


@pytest.fixture(scope="module")
def bninception_state() -> dict[str, torch.Tensor]:
    """A modern BN-Inception state dict (pretrainedmodels, no download), every value unlike a fresh
    model's."""
    import pretrainedmodels

    state = pretrainedmodels.bninception(num_classes=1000, pretrained=None).state_dict()
    return {k: v + 0.5 if v.is_floating_point() else v + 7 for k, v in state.items()}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip-file", "legacy-file"])
@pytest.mark.parametrize("counters", [True, False], ids=["with-counters", "pre-0.4.1-without-counters"])
def test_bninception_weights_load_with_or_without_batchnorm_counters(
    tmp_path: Path, bninception_state: dict[str, torch.Tensor], counters: bool, zip_format: bool
) -> None:
    state = dict(bninception_state)
    if not counters:  # the format of files saved before PyTorch 0.4.1, like bn_inception-52deb4733.pth
        removed = [k for k in state if k.endswith(".num_batches_tracked")]
        assert len(removed) == 69
        state = {k: v for k, v in state.items() if k not in removed}
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = build_model("bninception", 8, pretrained=True, weights=str(path)).backbone.trunk.net.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith("last_linear.")}  # the classifier is replaced
    assert all(torch.equal(loaded[k], v) for k, v in kept.items())
    counts = [int(v) for k, v in loaded.items() if k.endswith(".num_batches_tracked")]
    assert counts == [7] * 69 if counters else counts == [0] * 69


def _refusal(tmp_path: Path, content: object) -> str:
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(DataError) as info:
        build_model("bninception", 8, pretrained=True, weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "model.weights" in message
    return message


def test_a_weights_file_that_does_not_fit_is_one_line_naming_the_mismatch(
    tmp_path: Path, bninception_state: dict[str, torch.Tensor]
) -> None:
    state = dict(bninception_state)
    missing = {k: v for k, v in state.items() if k != "conv1_7x7_s2.weight"}
    assert "(1 missing, e.g. 'conv1_7x7_s2.weight')" in _refusal(tmp_path, missing)
    extra = {**state, "extra.weight": torch.zeros(2)}
    assert "1 unexpected, e.g. 'extra.weight'" in _refusal(tmp_path, extra)
    reshaped = {**state, "last_linear.weight": torch.zeros(10, 1024)}
    assert "1 of another shape, e.g. 'last_linear.weight' (10, 1024) instead of (1000, 1024)" in _refusal(
        tmp_path, reshaped
    )
    other = _refusal(tmp_path, {"something": torch.zeros(3)})  # the 69 BatchNorm counters may be absent
    assert (
        f"does not match the model ({len(state) - 69} missing, e.g. " in other
        and "1 unexpected, e.g. 'something'" in other
    )
    assert "holds no state dict" in _refusal(tmp_path, [1, 2, 3])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="unreadable"):
        build_model("bninception", 8, pretrained=True, weights=str(garbage))


def test_frozen_batchnorm_keeps_running_statistics() -> None:
    model = build_model("small_cnn", 8, pretrained=False, in_channels=1, width=4)
    model.train()
    freeze_batchnorm_statistics(model)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(8, 1, 32, 32) + 3.0).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None, "affine parameters still train"


def test_greyscale_input_needs_small_cnn() -> None:
    with pytest.raises(UserError, match="use backbone small_cnn"):
        build_model("bninception", 8, pretrained=False, in_channels=1)
    with pytest.raises(UserError, match="no pretrained weights"):
        build_model("small_cnn", 8, pretrained=True, in_channels=1)


def test_backbone_registry_names_each_backbone_with_its_input_convention() -> None:
    from harness.data import CONVENTIONS

    conventions = {name: entry.convention for name, entry in BACKBONES.items()}
    assert conventions == {"bninception": "bninception", "resnet50": "imagenet", "small_cnn": "grey"}
    assert all(entry.convention in CONVENTIONS and entry.summary for entry in BACKBONES.values())


def test_unknown_backbone_is_one_line_with_the_close_match() -> None:
    with pytest.raises(
        UserError, match=r"model.backbone: unknown backbone 'bninceptoin'; did you mean 'bninception'\?"
    ):
        build_model("bninceptoin", 8, pretrained=False)


def test_a_registered_backbone_builds_by_name() -> None:
    @register_backbone(convention="grey")
    def flat_linear(options: BackboneOptions) -> tuple[nn.Module, int]:
        """A linear map of the flattened image (test only)."""
        return nn.Sequential(nn.Flatten(), nn.Linear(options.in_channels * 8 * 8, 12)), 12

    try:
        model = build_model("flat_linear", 4, pretrained=False, in_channels=2)
        assert model(torch.randn(3, 2, 8, 8)).shape == (3, 4)
        assert BACKBONES["flat_linear"].summary == "A linear map of the flattened image (test only)."
        with pytest.raises(RuntimeError, match="registered twice"):
            register_backbone(convention="grey")(flat_linear)
    finally:
        BACKBONES.pop("flat_linear")
