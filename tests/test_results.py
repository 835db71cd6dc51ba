"""Results files: atomic writes, JSON reading with one-line errors, the cells table."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DamagedFileError, UserError
from harness.files import (
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    read_json_if_exists,
)
from harness.results import (
    CELLS_TABLE_COLUMNS,
    CellPaths,
    aggregate_reference,
    loss_label,
    read_pair_weights,
    tidy_rows,
    write_cells_table,
)


def test_atomic_writes_leave_no_temp_file_and_respect_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "final.json"
    atomic_write_json(target, {"status": "finished"})
    assert read_json(target) == {"status": "finished"}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["final.json"]


def test_read_json_passes_a_missing_file_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
    assert read_json_if_exists(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"status": "fin', "not valid JSON"),
        (b'{"a": "\xff\xfe"}', "not UTF-8 text"),
        (b"", "not valid JSON"),
    ],
)
def test_a_damaged_json_file_is_one_line_naming_it_and_the_remedy(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "final.json"
    atomic_write_bytes(path, content)
    for reader in (read_json, read_json_if_exists):
        with pytest.raises(DamagedFileError) as caught:
            reader(path, remedy="delete it and re-run to retrain that cell")
        message = str(caught.value)
        assert isinstance(caught.value, UserError)
        assert "\n" not in message
        assert message.startswith(f"{path}: damaged file, {problem}")
        assert message.endswith("; delete it and re-run to retrain that cell")


def _cell(exp_dir: Path, name: str, config: dict, final: dict | None) -> CellPaths:
    paths = CellPaths(exp_dir / "cells" / name)
    atomic_write_json(paths.config, config)
    if final is not None:
        atomic_write_json(paths.final, final)
    return paths


CONFIG = {
    "experiment": "x",
    "loss": {"name": "lifted_star", "preset": None},
    "dataset": "glyphs",
    "embedding_size": 8,
    "seed": 0,
    "variant": "default",
    "train": {"select_on": "val"},
}


def test_tidy_rows_label_losses_from_the_registry_and_spread_metrics(tmp_path: Path) -> None:
    final = {"status": "finished", "metrics": {"final": {"test": {"recall@1": 0.5, "map_at_r": 0.25}}}}
    _cell(tmp_path, "a", CONFIG, final)
    _cell(tmp_path, "b", {**CONFIG, "loss": {"name": "ms", "preset": "official", "label": "mine"}}, None)
    rows = tidy_rows(tmp_path)
    finished = [r for r in rows if r["cell_id"] == "a"]
    assert [(r["loss_label"], r["metric"], r["value"]) for r in finished] == [
        ("LiftedStruct*", "map_at_r", 0.25),
        ("LiftedStruct*", "recall@1", 0.5),
    ]
    (pending,) = [r for r in rows if r["cell_id"] == "b"]
    assert (pending["loss_label"], pending["preset"], pending["status"], pending["value"]) == (
        "mine",
        "official",
        "pending",
        "",
    )


def test_cells_table_has_the_declared_columns_in_order(tmp_path: Path) -> None:
    _cell(tmp_path, "a", CONFIG, {"status": "failed", "reason": "diverged"})
    lines = write_cells_table(tmp_path).read_text().splitlines()
    assert lines[0] == ",".join(CELLS_TABLE_COLUMNS)
    assert len(lines) == 2 and ",failed," in lines[1]


def test_loss_labels_come_from_the_registry() -> None:
    import losses

    assert [loss_label(name) for name in losses.available()] == [
        losses.info(name).label for name in losses.available()
    ]
    assert loss_label("a_loss_since_removed") == "a_loss_since_removed"


def test_a_damaged_cell_file_names_the_cell_and_how_to_retrain_it(tmp_path: Path) -> None:
    paths = _cell(tmp_path, "a", CONFIG, None)
    atomic_write_bytes(paths.final, b"{not json")
    with pytest.raises(DamagedFileError, match=r"final\.json: damaged file, .*retrain that cell"):
        tidy_rows(tmp_path)


def test_git_commit_is_dirty_for_modified_code_not_for_results(tmp_path: Path) -> None:
    from harness.results import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "cells.csv").write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert clean is not None and not clean.endswith("+dirty")
    (tmp_path / "results" / "cells.csv").write_text("b\n")  # a regenerated reference
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pos": rng.random(5, dtype=np.float32), "neg": rng.random(7, dtype=np.float32)}


def test_a_reference_keeps_one_pair_weights_file_per_run_and_drops_unread_files(tmp_path: Path) -> None:
    run_cells, trial = tmp_path / "run" / "cells", tmp_path / "studies" / "ms" / "trials" / "0"
    stored = {name: _weights(i) for i, name in enumerate("ab")}
    for name, arrays in stored.items():
        atomic_save_npz(run_cells / name / "pair_weights.npz", arrays)
        (run_cells / name / "train.log").write_text("worker output\n")
    (run_cells / "c").mkdir()  # a failed cell: no pair weights
    atomic_save_npz(trial / "pair_weights.npz", _weights(9))
    written = aggregate_reference(tmp_path)
    assert written == [
        tmp_path / "run" / "pair_weights.npz",
        tmp_path / "studies" / "ms" / "pair_weights.npz",
    ]
    assert not list(tmp_path.rglob("cells/*/pair_weights.npz")) and not list(tmp_path.rglob("train.log"))
    assert not (trial / "pair_weights.npz").exists()
    for name, arrays in stored.items():
        back = read_pair_weights(CellPaths(run_cells / name))
        assert all(np.array_equal(back[k], arrays[k]) and back[k].dtype == arrays[k].dtype for k in arrays)
    assert np.array_equal(read_pair_weights(CellPaths(trial))["neg"], _weights(9)["neg"])
    with pytest.raises(FileNotFoundError):
        read_pair_weights(CellPaths(run_cells / "c"))
    retrained = _weights(
        5
    )  # a cell retrained after the aggregation: its own file first, then aggregated again
    atomic_save_npz(run_cells / "a" / "pair_weights.npz", retrained)
    assert np.array_equal(read_pair_weights(CellPaths(run_cells / "a"))["pos"], retrained["pos"])
    aggregate_reference(tmp_path)
    assert np.array_equal(read_pair_weights(CellPaths(run_cells / "a"))["pos"], retrained["pos"])
    assert np.array_equal(read_pair_weights(CellPaths(run_cells / "b"))["neg"], stored["b"]["neg"])


def test_aggregate_command_names_a_missing_folder(tmp_path: Path) -> None:
    from harness.results import main

    with pytest.raises(UserError, match="no such folder"):
        main(["--aggregate", str(tmp_path / "absent")])


def test_the_committed_reference_holds_aggregated_pair_weights_for_every_finished_cell() -> None:
    reference = Path(__file__).resolve().parent.parent / "results" / "reference"
    assert not list(reference.rglob("*/cells/*/pair_weights.npz"))
    assert not list(reference.rglob("trials/**/pair_weights.npz")) and not list(reference.rglob("train.log"))
    finished = [p for p in reference.rglob("cells/*") if CellPaths(p).status_value() == "finished"]
    assert finished
    for folder in finished:
        arrays = read_pair_weights(CellPaths(folder))
        assert arrays["pos"].size and arrays["neg"].size
