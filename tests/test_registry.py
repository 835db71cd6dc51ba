"""The registry helper and every entry of the backbone, optimiser and dataset registries (one test each)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from harness.config import DataConfig, Grid, ModelConfig, OptimConfig
from harness.data import CONVENTIONS, DATASETS, OFFICIAL, build_transform
from harness.data.glyphs import build_glyph_splits
from harness.data.splits import EVAL_MODES
from harness.errors import UserError
from harness.models import BACKBONES, build_model
from harness.optimizers import OPTIMIZERS
from harness.registry import Registry


@dataclass(frozen=True)
class Tool:
    name: str
    summary: str
    factory: Any
    colour: str


def test_a_registry_records_factories_by_name_with_summary_and_metadata() -> None:
    tools: Registry[Tool] = Registry("tool", "config.tool", Tool)

    @tools.register(colour="red")
    def hammer() -> str:
        """Drives nails.

        More text.
        """
        return "bang"

    assert list(tools) == ["hammer"] == list(tools.names())
    assert tools["hammer"] == Tool("hammer", "Drives nails.", hammer, "red")
    assert tools.lookup("hammer").factory() == "bang"
    with pytest.raises(RuntimeError, match="tool 'hammer' is registered twice"):
        tools.register(colour="blue")(hammer)
    assert tools.check("hammer") == "hammer"
    with pytest.raises(ValueError, match=r"^unknown tool 'hamer'; did you mean 'hammer'\?$"):
        tools.check("hamer")


def test_an_unknown_name_is_one_line_with_the_config_key_and_the_choices() -> None:
    with pytest.raises(
        UserError, match=r"^optim\.name: unknown optimizer 'adan'; did you mean 'adam'"
    ) as err:
        OPTIMIZERS.lookup("adan")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^dataset: unknown dataset 'mnist'; expected one of 'cub', 'cars'"):
        DATASETS.lookup("mnist")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_backbone_builds_unit_embeddings(name: str) -> None:
    entry = BACKBONES[name]
    assert entry.name == name and entry.summary and entry.convention in CONVENTIONS
    ModelConfig(backbone=name)  # the schema accepts every registered name
    channels = CONVENTIONS[entry.convention].channels
    model = build_model(name, 8, pretrained=False, in_channels=channels, width=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 64, 64))
    assert out.shape == (2, 8) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_steps_both_parameter_groups(name: str) -> None:
    entry = OPTIMIZERS[name]
    assert entry.name == name and entry.summary
    settings = OptimConfig(name=name)
    weights = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    groups = [{"params": [weights[0]], "lr": 0.1}, {"params": [weights[1]], "lr": 0.01}]
    optimizer = entry.factory(groups, settings)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    (weights[0].sum() + weights[1].sum()).backward()
    optimizer.step()
    assert all(bool((w < 1).all()) for w in weights)


def _builder_options(name: str) -> dict[str, Any]:
    """The keyword arguments the dataset's own builder takes beyond the common data settings."""
    if name == "glyphs":
        function, common = (
            build_glyph_splits,
            {"cache_dir", "val_fraction", "val_seed", "val_folds", "val_fold"},
        )
        common |= {"image_size", "convention"}
    else:
        function, common = build_transform, {"convention", "image_size", "train", "crop_scale"}
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in common}


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_dataset_entry_is_complete_and_declares_its_builders_options(name: str) -> None:
    entry = DATASETS[name]
    assert entry.name == name and entry.summary and entry.title
    assert entry.eval_mode in EVAL_MODES and entry.default_ks and min(entry.default_ks) >= 1
    assert entry.convention in CONVENTIONS and entry.image_size >= 8
    assert any(backbone.convention == entry.convention for backbone in BACKBONES.values())
    assert dict(entry.options) == _builder_options(name)
    Grid(losses=["ms"], datasets=[name])  # the schema accepts every registered name
    DataConfig(options=dict(entry.options))
    if name in OFFICIAL:
        spec = OFFICIAL[name]
        assert (entry.title, entry.eval_mode, entry.default_ks) == (
            spec.title,
            spec.eval_mode,
            spec.default_ks,
        )


def test_the_glyph_entry_matches_the_splits_it_builds(tmp_path: Any) -> None:
    entry = DATASETS["glyphs"]
    splits = entry.factory(
        _request(tmp_path, entry, options={"num_classes": 8, "instances_per_class": 4, "min_fonts": 4})
    )
    assert (splits.eval_mode, splits.default_ks) == (entry.eval_mode, entry.default_ks)
    assert len(entry.train_classes(_request(tmp_path, entry, options={"num_classes": 8}))) == 4


def _request(tmp_path: Any, entry: Any, *, options: dict[str, Any]) -> Any:
    from harness.data import DatasetRequest

    return DatasetRequest(
        root=None,
        image_size=entry.image_size,
        convention=entry.convention,
        val_fraction=0.5,
        cache_dir=tmp_path,
        options=options,
    )
