"""timm backbones (``model.backbone: timm:<name>``): names, input conventions, weights, pooling, freeze_bn,
training."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from test_data_loaders import make_cub
from torchvision.transforms import v2

from harness import run
from harness.config import load_experiment
from harness.data import build_splits
from harness.data.transforms import get_convention
from harness.errors import UserError
from harness.models import batchnorm_layers, build_model, freeze_batchnorm_statistics

timm = pytest.importorskip("timm", reason="timm backbones need the timm package (pip install timm)")

ROOT = Path(__file__).resolve().parent.parent
# test_vit and test_resnet are timm's own tiny test models (a few hundred thousand parameters).
CUB_RUN = {
    "name": "timm-cub",
    "grid": {"datasets": ["cub"], "embedding_sizes": [8], "seeds": [0], "losses": ["ms"]},
    "data": {
        "image_size": 32,
        "workers": 0,
        "classes_per_batch": 2,
        "samples_per_class": 2,
        "val_fraction": 0.0,
        "strict_counts": False,
    },
    "model": {"backbone": "timm:test_vit", "pretrained": False, "pooling": "token", "freeze_bn": True},
    "optim": {"lr_backbone": 0.001, "lr_head": 0.001},
    "train": {"iterations": 3, "eval_every": 3, "log_every": 1, "select_on": "final", "threads": 1},
    "evaluate": {"metrics": ["recall"], "ks": [1]},
}


def write_run(tmp_path: Path, model: dict[str, object] | None = None) -> Path:
    make_cub(tmp_path / "data")
    doc = {**CUB_RUN, "data": {**CUB_RUN["data"], "root": str(tmp_path / "data")}}
    doc["model"] = {**CUB_RUN["model"], **(model or {})}
    path = tmp_path / "timm-cub.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        ("timm:resnet5O", r"unknown timm model 'timm:resnet5O'; did you mean 'timm:resnet50'"),
        (
            "timm:vit_small_patch16_224.dinoo",
            r"timm model 'vit_small_patch16_224' has no pretrained weights 'dinoo'; "
            r"did you mean 'timm:vit_small_patch16_224\.dino'",
        ),
        ("timm:zzzzqqq", r"unknown timm model 'timm:zzzzqqq'; see timm\.list_models\(\)"),
    ],
)
def test_a_timm_name_is_checked_when_the_file_is_read(tmp_path: Path, backbone: str, message: str) -> None:
    with pytest.raises(UserError, match=rf"model\.backbone: {message}") as caught:
        load_experiment(write_run(tmp_path, {"backbone": backbone}))
    assert "\n" not in str(caught.value)


def test_without_timm_a_timm_backbone_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(
        UserError, match=r"model\.backbone: timm:test_convnext needs the timm package.*pip install timm"
    ):
        load_experiment(write_run(tmp_path, {"backbone": "timm:test_convnext"}))


def test_token_pooling_needs_a_timm_backbone(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model: pooling: 'token' .* needs a timm backbone"):
        load_experiment(write_run(tmp_path, {"backbone": "resnet50", "pretrained": False}))


def test_the_images_are_normalised_as_the_timm_model_was_pretrained(tmp_path: Path) -> None:
    spec = get_convention("timm:test_vit")  # timm's config: mean = std = 0.5, bicubic, crop 0.95, 160 px
    assert (spec.mean, spec.std, spec.interpolation, spec.crop_pct, spec.input_size) == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bicubic",
        0.95,
        160,
    )
    splits = build_splits(
        "cub", make_cub(tmp_path), image_size=16, convention="timm:test_vit", strict_counts=False
    )
    expected = v2.Compose(
        [
            v2.Resize(round(16 / 0.95), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(16),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
        ]
    )
    first = splits.test.root / splits.test.files[0]
    assert torch.allclose(splits.test[0][0], expected(Image.open(first).convert("RGB")), atol=1e-6)


@pytest.mark.parametrize(("backbone", "pooling"), [("timm:test_vit", "token"), ("timm:test_resnet", "avg")])
def test_a_timm_model_trains_a_few_iterations_through_the_harness(
    backbone: str, pooling: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_run(tmp_path, {"backbone": backbone, "pooling": pooling})
    assert run.main([str(exp), "--results", str(tmp_path / "results"), "--no-report"]) == 0
    with open(tmp_path / "results" / "timm-cub" / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["status"] for row in rows} == {"finished"} and any(
        row["metric"] == "recall@1" for row in rows
    )
    err = capsys.readouterr().err
    assert ("model.freeze_bn has no effect, the model has no BatchNorm layer" in err) == (
        backbone == "timm:test_vit"
    )


def test_freeze_bn_freezes_batchnorm_only_and_leaves_a_vit_as_it_is() -> None:
    vit = build_model("timm:test_vit", 8, pretrained=False, pooling="avg", image_size=32)
    resnet = build_model("timm:test_resnet", 8, pretrained=False, pooling="max")
    assert batchnorm_layers(vit) == [] and batchnorm_layers(resnet)
    for model in (vit, resnet):
        model.train()
        freeze_batchnorm_statistics(model)
        assert all(not layer.training for layer in batchnorm_layers(model))
    assert all(m.training for m in vit.modules()), "a ViT's LayerNorms are untouched"
    assert vit(torch.randn(2, 3, 32, 32)).shape == resnet(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_weights_come_from_model_weights_offline(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", pretrained=False)  # with its classifier, as a hub file is
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    model = build_model("timm:test_resnet", 8, pretrained=True, weights=str(path), pooling="avg")
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items() if k in loaded)
    assert "fc.weight" not in loaded
    with pytest.raises(UserError, match=r"model\.weights: .*missing\.pth not found"):
        build_model("timm:test_resnet", 8, pretrained=True, weights=str(tmp_path / "missing.pth"))


def test_offline_pretrained_weights_without_a_file_are_one_line(tmp_path: Path) -> None:
    exp = write_run(tmp_path, {"backbone": "timm:test_resnet", "pooling": "avg", "pretrained": True})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "harness.run", str(exp), "--results", str(tmp_path / "r"), "--quiet"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]  # after the run's grid line: one error line, no traceback
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1, done.stderr
    assert line.startswith(
        "error: model.backbone: timm:test_resnet: its pretrained weights could not be loaded"
    )
    assert "give the downloaded file as model.weights" in line
