"""Experiment files: every shipped file instantiates; every mistake is one line with path and fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import RUNNABLE_EXPERIMENTS

from harness.config import (
    CellConfig,
    LossSpec,
    expand_cells,
    load_experiment,
    parse_shard,
    shard_cells,
)
from harness.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = RUNNABLE_EXPERIMENTS


def write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    base = tmp_path / "base.yaml"
    if not base.exists():
        base.write_text((ROOT / "experiments" / "base.yaml").read_text())
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", **data}))
    return path


GRID = {
    "grid": {"losses": ["ms", "binomial"], "datasets": ["cars"], "embedding_sizes": [64], "seeds": [0, 1]}
}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_instantiates(path: Path) -> None:
    from harness.models import build_model

    experiment = load_experiment(path)
    cells = expand_cells(experiment)
    assert cells, "an experiment must have at least one cell"
    assert len({c.cell_id for c in cells}) == len(cells), "cell ids must be unique"
    for cell in cells:
        loss = cell.loss.build()
        assert callable(loss)
    built = set()
    for cell in cells:
        key = (cell.model.backbone, cell.embedding_size)
        if key in built:
            continue
        built.add(key)
        model = build_model(
            cell.model.backbone,
            cell.embedding_size,
            pretrained=False,
            pooling=cell.model.pooling,
            in_channels=1 if cell.model.backbone == "small_cnn" else 3,
            width=cell.model.width,
        )
        assert model.head.out_features == cell.embedding_size


def test_shipped_ablation_has_every_table2_row() -> None:
    cells = expand_cells(load_experiment(ROOT / "experiments" / "ablation.yaml"))
    names = {c.loss.name for c in cells}
    assert names == {
        "binomial",
        "lifted_star",
        "ms_mining",
        "binlifted",
        "ms_weighting",
        "binomial_m",
        "lifted_star_m",
        "ms",
    }
    assert {c.dataset for c in cells} == {"cars"} and {c.embedding_size for c in cells} == {64}
    official = [c for c in cells if c.variant == "official"]
    assert official and all(c.train.select_on == "test" and c.data.image_size == 227 for c in official)


def test_base_defaults_and_overrides(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, {**GRID, "train": {"iterations": 7}}), sets=["optim.lr_head=0.001"])
    cells = expand_cells(exp)
    assert len(cells) == 4
    assert all(c.train.iterations == 7 for c in cells)
    assert all(c.optim.lr_head == 0.001 for c in cells)
    assert all(c.train.eval_every == 200 for c in cells)  # from base.yaml
    assert exp.name == "exp"


def test_set_accepts_yaml_values(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, GRID), sets=["grid.seeds=[5, 6, 7]", "train.select_on=test"])
    assert exp.grid.seeds == [5, 6, 7]
    assert exp.train.select_on == "test"


def test_variants_and_dataset_overrides(tmp_path: Path) -> None:
    data = {
        **GRID,
        "grid": {
            **GRID["grid"],
            "datasets": ["cars", "sop"],
            "variants": {"a": {}, "b": {"train.iterations": 3}},
        },
        "dataset_overrides": {"sop": {"data.classes_per_batch": 50}},
    }
    cells = expand_cells(load_experiment(write(tmp_path, data)))
    assert len(cells) == 2 * 2 * 2 * 2
    assert {c.data.classes_per_batch for c in cells if c.dataset == "sop"} == {50}
    assert {c.data.classes_per_batch for c in cells if c.dataset == "cars"} == {16}
    assert {c.train.iterations for c in cells if c.variant == "b"} == {3}


def test_embedding_sizes_per_dataset(tmp_path: Path) -> None:
    data = {
        "grid": {
            "losses": ["ms"],
            "datasets": ["cub", "sop"],
            "embedding_sizes": {"cub": [64], "sop": [64, 128]},
        }
    }
    cells = expand_cells(load_experiment(write(tmp_path, data)))
    assert sorted((c.dataset, c.embedding_size) for c in cells) == [("cub", 64), ("sop", 64), ("sop", 128)]
    with pytest.raises(UserError, match="no sizes for dataset 'sop'"):
        load_experiment(
            write(tmp_path, {"grid": {**data["grid"], "embedding_sizes": {"cub": [64]}}}, "x.yaml")
        )


def test_cell_id_is_stable_and_tracks_the_config(tmp_path: Path) -> None:
    first = [c.cell_id for c in expand_cells(load_experiment(write(tmp_path, GRID)))]
    again = [c.cell_id for c in expand_cells(load_experiment(write(tmp_path, GRID)))]
    moved = [
        c.cell_id
        for c in expand_cells(
            load_experiment(write(tmp_path, GRID), sets=["data.root=/elsewhere", "data.workers=0"])
        )
    ]
    changed = [
        c.cell_id for c in expand_cells(load_experiment(write(tmp_path, GRID), sets=["train.iterations=5"]))
    ]
    assert first == again == moved
    assert not set(first) & set(changed)
    assert first[0].startswith("cars-ms-d64-s0-")


def test_cell_id_is_computed_once_and_a_changed_copy_gets_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = expand_cells(load_experiment(write(tmp_path, GRID)))[0]
    resolutions = []
    resolved = LossSpec.resolved
    monkeypatch.setattr(LossSpec, "resolved", lambda spec: resolutions.append(spec) or resolved(spec))
    assert cell.cell_id == cell.cell_id == cell.record()["cell_id"]
    assert len(resolutions) == 2  # one for the id, one for the record's resolved_loss
    trained_longer = cell.model_copy(update={"train": cell.train.model_copy(update={"iterations": 5})})
    assert trained_longer.cell_id != cell.cell_id
    assert trained_longer.cell_id == CellConfig.model_validate(trained_longer.model_dump()).cell_id
    assert "cell_id" not in cell.model_dump()


def test_a_setting_at_its_schema_default_leaves_the_cell_id_unchanged(tmp_path: Path) -> None:
    """New options arrive with a default that keeps the old behaviour: existing ids (and results) stay valid."""
    import harness.config.schema  # cell_id reads CELL_ID_VERSION from the module that defines it

    plain = expand_cells(load_experiment(write(tmp_path, GRID)))
    explicit = expand_cells(
        load_experiment(write(tmp_path, GRID), sets=["data.val_folds=0", "train.amp=auto"])
    )
    assert [c.cell_id for c in plain] == [c.cell_id for c in explicit]
    ids = {c.cell_id for c in plain}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness.config.schema, "CELL_ID_VERSION", harness.config.schema.CELL_ID_VERSION + 1)
        bumped = expand_cells(load_experiment(write(tmp_path, GRID)))  # an id is computed once per cell
        assert not ids & {c.cell_id for c in bumped}


def test_a_cell_records_its_loss_with_every_hyperparameter_resolved(tmp_path: Path) -> None:
    data = {
        "grid": {
            **GRID["grid"],
            "losses": [{"name": "ms", "preset": "official", "hparams": {"beta": 45}}, "contrastive"],
            "seeds": [0],
        }
    }
    ms, contrastive = expand_cells(load_experiment(write(tmp_path, data)))
    assert ms.resolved_loss() == {
        "name": "ms",
        "preset": "official",
        "hparams": {"alpha": 2.0, "beta": 45.0, "lam": 0.5, "eps": 0.1},
    }
    assert contrastive.resolved_loss() == {"name": "contrastive", "preset": "paper", "hparams": {"lam": 0.5}}
    record = ms.record()
    assert (record["cell_id"], record["resolved_loss"]) == (ms.cell_id, ms.resolved_loss())
    rest = {k: v for k, v in record.items() if k not in ("cell_id", "resolved_loss")}
    assert CellConfig.model_validate(rest) == ms


def test_cell_id_changes_when_a_preset_value_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from losses import zoo

    data = {"grid": {**GRID["grid"], "losses": ["ms", {"name": "ms", "preset": "official"}, "contrastive"]}}
    cells = expand_cells(load_experiment(write(tmp_path, data)))
    before = {c.cell_id: c for c in cells}
    monkeypatch.setitem(zoo.PRESETS["paper"], "beta", 45.0)
    after = {c.cell_id: c for c in expand_cells(load_experiment(write(tmp_path, data)))}  # ids: once per cell
    retrained = {c.loss.name + (c.loss.preset or "") for old_id, c in before.items() if old_id not in after}
    assert retrained == {
        "ms"
    }  # the paper preset's cells; contrastive has no beta, the official preset kept 40
    assert len(after) == len(before) == 6
    assert {c.resolved_loss()["hparams"]["beta"] for c in after.values() if c.loss.name == "ms"} == {
        40.0,
        45.0,
    }


def test_same_values_said_differently_keep_different_cell_ids(tmp_path: Path) -> None:
    """The id hashes the spec as written as well as the resolved values (documented on CellConfig.cell_id)."""
    official = {"name": "ms", "preset": "official"}
    spelled_out = {"name": "ms", "preset": "paper", "hparams": {"beta": 40.0, "lam": 0.5}}
    data = {"grid": {**GRID["grid"], "losses": [official, spelled_out], "seeds": [0]}}
    first, second = expand_cells(load_experiment(write(tmp_path, data)))
    assert first.resolved_loss()["hparams"] == second.resolved_loss()["hparams"]
    assert first.cell_id != second.cell_id


@pytest.mark.parametrize(
    ("data", "sets", "expected"),
    [
        (
            {"grid": {**GRID["grid"], "losses": ["ms", "binomial", "ms_weigting"]}},
            [],
            "grid.losses[2]: unknown loss 'ms_weigting'; did you mean 'ms_weighting'?",
        ),
        (GRID, ["grid.datasets=[carz]"], "grid.datasets: unknown dataset 'carz'; did you mean 'cars'?"),
        (GRID, ["train.iterationz=5"], "train.iterationz: unknown field 'iterationz' in train"),
        (
            GRID,
            ["train.iterations=-3"],
            "train.iterations: Input should be greater than or equal to 1 (got -3)",
        ),
        (
            GRID,
            ["train.select_on=tset"],
            "train.select_on: Input should be 'val', 'final' or 'test' (got 'tset')",
        ),
        (GRID, ["data.val_fraction=1.5"], "data.val_fraction: Input should be less than 1"),
        (
            GRID,
            ["model.backbone=resnet"],
            "model.backbone: unknown backbone 'resnet'; did you mean 'resnet50'?",
        ),
        (
            GRID,
            ["optim.name=adamm"],
            "optim.name: unknown optimizer 'adamm'; did you mean 'adam' or 'adamw'?",
        ),
        (
            GRID,
            ["evaluate.metrics=[recall, mapr]"],
            "evaluate.metrics: unknown metric 'mapr'; did you mean 'map_at_r'?",
        ),
        (GRID, ["data.sampler=oficial"], "data.sampler: unknown sampler 'oficial'; did you mean 'official'?"),
        (
            {**GRID, "dataset_overrides": {"soap": {}}},
            [],
            "dataset_overrides: unknown dataset 'soap'; did you mean",
        ),
        (
            {"grid": {**GRID["grid"], "losses": [{"name": "ms", "hparams": {"alpah": 2}}]}},
            [],
            "grid.losses[0]: loss 'ms' rejects its settings",
        ),
        (GRID, ["train"], "--set 'train': expected key=value"),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path: Path, data: dict, sets: list[str], expected: str) -> None:
    with pytest.raises(UserError) as info:
        load_experiment(write(tmp_path, data), sets=sets)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_every_registered_optimizer_is_a_valid_optim_name(tmp_path: Path) -> None:
    """The schema validates optim.name against the builders' registry: registering an optimiser is the only edit."""
    from harness.builders import OPTIMIZERS

    for name in OPTIMIZERS:
        experiment = load_experiment(write(tmp_path, GRID), sets=[f"optim.name={name}"])
        assert experiment.optim.name == name


def test_a_loss_setting_rejected_when_building_is_a_user_error() -> None:
    """A spec that skipped validation (model_construct) still fails as one line, not as a ValueError."""
    spec = LossSpec.model_construct(name="ms", preset="offical", hparams={}, label=None)
    with pytest.raises(UserError, match=r"^loss 'ms' rejects its settings: .*unknown preset 'offical'"):
        spec.build()


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_experiment(bad)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_experiment(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(UserError, match=r"'missing\.yaml' not found"):
        load_experiment(tmp_path / "c.yaml")


def test_shards_partition_the_grid(tmp_path: Path) -> None:
    cells = expand_cells(load_experiment(write(tmp_path, GRID), sets=["grid.seeds=[0,1,2,3,4]"]))
    shards = [shard_cells(cells, i, 3) for i in range(3)]
    ids = [c.cell_id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.cell_id for c in cells)
    assert len(ids) == len(set(ids))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x/2", "1", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_cli_check_and_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DATA"}
    glyphs = {
        "grid": {**GRID["grid"], "datasets": ["glyphs"]},
        "model": {"backbone": "small_cnn", "pretrained": False},
    }
    good = write(tmp_path, glyphs)
    ok = subprocess.run(
        [sys.executable, "-m", "harness.run", "--check", str(good)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 cells" in ok.stdout
    no_data = subprocess.run(
        [sys.executable, "-m", "harness.run", "--check", str(write(tmp_path, GRID, "cars.yaml"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert no_data.returncode == 2 and no_data.stderr.count("\n") == 1
    assert "Cars-196: no data root given; set HARNESS_DATA=DIR" in no_data.stderr
    bad = write(tmp_path, {"grid": {**GRID["grid"], "losses": ["ms_weigting"]}}, "bad.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "harness.run", "--check", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "did you mean 'ms_weighting'?" in out.stderr
    assert "Traceback" not in out.stderr
