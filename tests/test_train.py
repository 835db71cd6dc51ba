"""What a cell is built from (harness.builders) and what the trainer records about it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import WriteExperiment

from harness.builders import OPTIMIZERS, build_model, build_optimizer, build_schedule, load_splits
from harness.config import CellConfig, expand_cells, load_experiment
from harness.errors import UserError
from harness.results import CellPaths
from harness.train import train_cell

OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def tiny_cells(tiny_experiment: WriteExperiment, overrides: dict | None = None) -> list[CellConfig]:
    return expand_cells(load_experiment(tiny_experiment(overrides)))


def with_optim(cell: CellConfig, **settings: object) -> CellConfig:
    return cell.model_copy(update={"optim": cell.optim.model_copy(update=settings)})


def test_the_optimizer_registry_holds_every_optimizer_with_a_summary() -> None:
    assert set(OPTIMIZERS) == set(OPTIMIZER_CLASSES)
    assert all(entry.summary for entry in OPTIMIZERS.values())


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CLASSES))
def test_each_optimizer_gets_backbone_and_head_learning_rates(
    tiny_experiment: WriteExperiment, name: str
) -> None:
    cell = with_optim(
        tiny_cells(tiny_experiment)[0], name=name, lr_backbone=0.01, lr_head=0.1, weight_decay=0.5
    )
    model = build_model(cell, in_channels=1)
    optimizer = build_optimizer(cell, model)
    assert type(optimizer) is OPTIMIZER_CLASSES[name]
    backbone, head = optimizer.param_groups
    assert (backbone["lr"], head["lr"]) == (0.01, 0.1)
    assert backbone["weight_decay"] == head["weight_decay"] == 0.5
    assert [id(p) for p in backbone["params"]] == [id(p) for p in model.backbone.parameters()]
    assert [id(p) for p in head["params"]] == [id(p) for p in model.head.parameters()]


def test_an_unknown_optimizer_is_one_line_with_the_close_match(tiny_experiment: WriteExperiment) -> None:
    cell = with_optim(tiny_cells(tiny_experiment)[0], name="adamm")
    with pytest.raises(UserError, match=r"optim.name: unknown optimizer 'adamm'; did you mean 'adam'"):
        build_optimizer(cell, build_model(cell, in_channels=1))


def test_the_schedule_multiplies_the_rates_at_each_milestone(tiny_experiment: WriteExperiment) -> None:
    cell = tiny_cells(tiny_experiment, {"schedule.milestones": [3, 5], "schedule.gamma": 0.5})[0]
    optimizer = build_optimizer(cell, build_model(cell, in_channels=1))
    schedule = build_schedule(cell, optimizer)
    rates = []
    for _ in range(6):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[1]["lr"])
    assert rates == pytest.approx([0.002, 0.002, 0.001, 0.001, 0.0005, 0.0005])


def test_splits_are_built_once_per_data_settings(tiny_experiment: WriteExperiment) -> None:
    ms, binomial = tiny_cells(tiny_experiment)
    assert load_splits(ms) is load_splits(binomial)  # other loss, same data
    (other_val,) = tiny_cells(tiny_experiment, {"data.val_fraction": 0.5, "grid.losses": ["ms"]})
    assert load_splits(other_val) is not load_splits(ms)
    assert len(load_splits(other_val).val) > len(load_splits(ms).val)


def test_a_cell_trains_on_given_splits_and_records_its_resolved_loss(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    cell = tiny_cells(
        tiny_experiment, {"train.iterations": 4, "train.eval_every": 4, "schedule.milestones": [2]}
    )[0]
    loaded = load_splits(cell)
    val_as_test = dataclasses.replace(loaded, test=loaded.val)  # proves which splits the cell evaluated
    paths = CellPaths(tmp_path / "cell")
    outcome = train_cell(cell, paths, splits=val_as_test, progress=False)
    assert outcome.status == "finished"
    assert outcome.metrics["final"]["test"] == outcome.metrics["final"]["val"]
    final, config = json.loads(paths.final.read_text()), json.loads(paths.config.read_text())
    assert final["resolved_loss"] == config["resolved_loss"] == cell.resolved_loss()
    assert final["resolved_loss"]["name"] == "ms" and set(final["resolved_loss"]["hparams"]) >= {
        "alpha",
        "beta",
    }


def test_the_final_evaluation_reuses_what_the_selection_measured(
    tmp_path: Path, tiny_experiment: WriteExperiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.train as train

    cell = tiny_cells(
        tiny_experiment, {"train.iterations": 6, "train.eval_every": 2, "schedule.milestones": [4]}
    )[0]
    calls: list[str] = []
    real = train.evaluate_split

    def counted(model, splits, split, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(split)
        return real(model, splits, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate_split", counted)
    outcome = train_cell(cell, CellPaths(tmp_path / "cell"), progress=False)
    evals = json.loads((tmp_path / "cell" / "final.json").read_text())
    assert outcome.status == "finished" and calls.count("val") == 3  # iterations 2, 4, 6: no repeat
    assert calls.count("test") == (1 if evals["selected_iteration"] == 6 else 2)
    measured = [row for row in _eval_rows(tmp_path / "cell") if row["split"] == "val"]
    assert {row["metric"]: row["value"] for row in measured if row["iteration"] == 6} == outcome.metrics[
        "final"
    ]["val"]


def _eval_rows(cell_dir: Path) -> list[dict[str, object]]:
    import csv

    with (cell_dir / "evals.csv").open() as handle:
        return [
            {**row, "iteration": int(row["iteration"]), "value": float(row["value"])}
            for row in csv.DictReader(handle)
        ]
