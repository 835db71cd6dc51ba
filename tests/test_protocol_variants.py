"""The shipped protocol variants (paper, paper-val, official), the final-weights rule and how reports label
each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import WriteExperiment

from harness import run
from harness.config import CellConfig, TrainConfig, expand_cells, load_experiment
from harness.report.protocol import PROTOCOL_NOTES, TEST_SELECTED, protocol_biases

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("ablation.yaml", "sota.yaml", "embedding_size.yaml")
VARIANTS = {"paper", "paper-val", "official"}


def cells_by_variant(name: str) -> dict[str, list[CellConfig]]:
    cells: dict[str, list[CellConfig]] = {}
    for cell in expand_cells(load_experiment(ROOT / "experiments" / name)):  # validates every cell
        cells.setdefault(cell.variant, []).append(cell)
    return cells


def grid_point(cell: CellConfig) -> tuple[str, int, str, int]:
    return cell.dataset, cell.embedding_size, cell.loss.name, cell.seed


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_experiment_runs_every_grid_point_under_the_three_variants(name: str) -> None:
    cells = cells_by_variant(name)
    assert set(cells) == VARIANTS
    points = {variant: sorted(map(grid_point, group)) for variant, group in cells.items()}
    assert points["paper"] == points["paper-val"] == points["official"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_paper_variant_trains_on_all_training_classes_and_reports_the_final_weights(name: str) -> None:
    cells = cells_by_variant(name)
    for cell in cells["paper"]:
        assert cell.data.val_fraction == 0.0 and cell.train.select_on == "final"
        assert cell.loss.preset in (None, "paper") and cell.data.image_size == 224
        assert cell.data.sampler == "proportional"
    for cell in cells["paper-val"]:  # the same, selected on validation classes carved from the training ones
        assert cell.data.val_fraction == 0.2 and cell.train.select_on == "val"
        assert cell.loss.preset in (None, "paper") and cell.data.image_size == 224
    for cell in cells["official"]:
        assert cell.data.val_fraction == 0.0 and cell.train.select_on == "test"


@pytest.mark.parametrize("name", SHIPPED)
def test_test_selection_is_only_an_explicit_opt_in_of_the_official_variant(name: str) -> None:
    raw = yaml.safe_load((ROOT / "experiments" / name).read_text())
    variants = raw["grid"]["variants"]
    assert variants["official"]["train.select_on"] == "test", "the opt-in is written in the variant itself"
    assert all(v.get("train.select_on") != "test" for k, v in variants.items() if k != "official")
    assert "test" not in str(raw.get("train", {}).get("select_on", ""))
    base = yaml.safe_load((ROOT / "experiments" / "base.yaml").read_text())
    assert base["train"]["select_on"] == "val" and TrainConfig().select_on == "val"
    header = (ROOT / "experiments" / name).read_text().split("\nname:")[0]
    for variant in VARIANTS:  # the file's header says what each variant is
        assert f"`{variant}`" in header
    assert "select_on: final" in header and "select_on: test" in header


def test_each_checkpoint_rule_is_labelled_with_its_bias() -> None:
    paper = {"data": {"val_fraction": 0.0}, "train": {"select_on": "final"}}
    for weights in ("selected", "final"):  # final selection: both views are the final weights
        assert (
            protocol_biases(paper, {}, weights, coincide=False) == "all training classes =; final weights ↓"
        )
    validation = {"data": {"val_fraction": 0.2}, "train": {"select_on": "val"}}
    assert (
        protocol_biases(validation, {}, "selected", coincide=False)
        == "80% of training classes ↓; val-selected ↓"
    )
    official = {"data": {"val_fraction": 0.0}, "train": {"select_on": "test"}}
    selected = protocol_biases(official, {}, "selected", coincide=False)
    assert selected == "all training classes =; test-selected (opt-in, optimistic, as the official code) ="
    assert protocol_biases(official, {}, "final", coincide=False) == "all training classes =; final weights ↓"
    assert TEST_SELECTED in PROTOCOL_NOTES and "train.select_on: final" in PROTOCOL_NOTES


def test_a_final_weights_cell_trains_without_selection_and_the_report_says_so(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment(
        {
            "grid.losses": ["ms"],
            "grid.variants": {
                "paper": {"data.val_fraction": 0.0, "train.select_on": "final"},
                "official": {"data.val_fraction": 0.0, "train.select_on": "test"},
            },
        }
    )
    results = tmp_path / "results"
    assert run.main([str(exp), "--results", str(results), "--quiet"]) == 0
    folders = {
        json.loads((p / "config.json").read_text())["variant"]: p
        for p in (results / "tiny" / "cells").iterdir()
    }
    assert set(folders) == {"paper", "official"}

    paper = folders["paper"]
    final = json.loads((paper / "final.json").read_text())
    assert final["status"] == "finished" and final["select_on"] == "final" and final["select_metric"] is None
    assert final["selected_iteration"] == final["iterations"] == 24
    assert final["metrics"]["selected"] == final["metrics"]["final"]
    assert set(final["metrics"]["final"]) == {"test"}, "no validation split: all training classes"
    assert (paper / "evals.csv").read_text().strip().splitlines()[1:] == [], (
        "nothing evaluated during training"
    )
    config, env = (json.loads((paper / f).read_text()) for f in ("config.json", "env.json"))
    for weights in ("selected", "final"):
        assert protocol_biases(config, env, weights, coincide=False).startswith(
            "all training classes =; final weights ↓"
        )

    official = folders["official"]
    final = json.loads((official / "final.json").read_text())
    assert final["selected_iteration"] in (8, 16, 24) and final["select_metric"] == "recall@1"
    config, env = (json.loads((official / f).read_text()) for f in ("config.json", "env.json"))
    assert TEST_SELECTED in protocol_biases(config, env, "selected", coincide=False)

    report = (results / "tiny" / "report.md").read_text()
    assert "`final` (1 cells)" in report and "`test` (1 cells)" in report
    assert "official on test; paper none (final weights)" in report
    assert "or the final weights where `select_on` is `final` (no selection)" in report
    assert "makes the *selected* test numbers optimistic" in report
