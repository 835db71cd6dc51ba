"""Reading a finished cell back: config.json into CellConfig, its kept weights, its embeddings of any
split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import WriteExperiment

import harness
from harness import run
from harness.config import CellConfig, expand_cells, load_experiment
from harness.errors import DamagedFileError, UserError
from harness.evaluate import evaluate
from harness.results import cell_paths

SHORT = {
    "grid.losses": ["ms"],
    "train.iterations": 8,
    "train.eval_every": 4,
    "train.log_every": 4,
    "schedule.milestones": [6],
}


@pytest.fixture()
def trained(tmp_path: Path, tiny_experiment: WriteExperiment) -> tuple[CellConfig, Path]:
    """The tiny MS cell trained with ``train.keep_weights: true``: its config and its folder."""
    exp = tiny_experiment({**SHORT, "train.keep_weights": True})
    assert run.main([str(exp), "--results", str(tmp_path / "results"), "--quiet", "--no-report"]) == 0
    (cell,) = expand_cells(load_experiment(exp))
    return cell, cell_paths(tmp_path / "results" / "tiny", cell.cell_id).root


def test_embeddings_of_the_test_split_give_the_metrics_final_json_holds(trained) -> None:
    cell, folder = trained
    loaded = harness.load_cell(folder)
    assert loaded.config == cell and loaded.config.cell_id == cell.cell_id
    stored = json.loads((folder / "final.json").read_text())["metrics"]
    assert loaded.final is not None and loaded.final.metrics == stored
    for weights in ("final", "selected"):
        embeddings, labels = loaded.embed("test", weights)
        assert embeddings.shape == (len(loaded.splits().test), cell.embedding_size)
        assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(labels)))
        ks, metrics = cell.evaluate.ks, tuple(cell.evaluate.metrics)
        recomputed = evaluate(embeddings, labels, ks=ks, metrics=metrics)
        assert recomputed["recall@1"] == stored[weights]["test"]["recall@1"], weights
        assert recomputed == pytest.approx(stored[weights]["test"], abs=1e-12)
    val, _ = loaded.embed("val", "final")
    assert len(val) == len(loaded.splits().val)
    with pytest.raises(UserError, match=r"has no 'query' split \(glyphs: train, val, test\)"):
        loaded.embed("query")
    assert not loaded.model().training


def test_a_cell_without_kept_weights_says_how_to_keep_them(tmp_path: Path, tiny_experiment) -> None:
    exp = tiny_experiment(SHORT)
    assert run.main([str(exp), "--results", str(tmp_path / "r"), "--quiet", "--no-report"]) == 0
    (cell,) = expand_cells(load_experiment(exp))
    loaded = harness.load_cell(cell_paths(tmp_path / "r" / "tiny", cell.cell_id).root)
    with pytest.raises(UserError, match=r"kept no selected weights .* train\.keep_weights: true") as caught:
        loaded.embed("test")
    assert "\n" not in str(caught.value)


def test_config_json_reads_back_and_its_stored_id_is_verified(trained) -> None:
    cell, folder = trained
    record = json.loads((folder / "config.json").read_text())
    assert CellConfig.model_validate(record) == cell
    edited = {**record, "seed": record["seed"] + 1}  # another config under the old id
    with pytest.raises(
        DamagedFileError, match=r"cell_id '.*' is not the id this version computes .*another version"
    ):
        (folder / "config.json").write_text(json.dumps(edited))
        harness.load_cell(folder)
    stale_loss = {**record, "resolved_loss": {**record["resolved_loss"], "hparams": {"alpha": 1.0}}}
    (folder / "config.json").write_text(json.dumps(stale_loss))
    with pytest.raises(DamagedFileError, match=r"resolved_loss .* another version") as caught:
        harness.load_cell(folder)
    assert "\n" not in str(caught.value) and "config.json" in str(caught.value)


def test_a_folder_without_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json; give a cell folder"):
        harness.load_cell(tmp_path)
