"""Fault injection: hostile configs, damaged result files and filesystem faults give one line (exit 2),
lose nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_tiny_experiment

from harness import files, run
from harness.config import expand_cells, load_experiment
from harness.errors import EXIT_USER_ERROR, DamagedFileError, UserError, cli_main
from harness.report import main as report_main
from harness.report import read_cells, write_report
from harness.results import (
    CellPaths,
    cells_table_mismatch,
    grid_cell_ids,
    load_checkpoint,
    stale_cell_ids,
    tidy_rows,
    write_cells_table,
)

Runner = Callable[..., tuple[int, str]]
FIRST_ITERATIONS, SECOND_ITERATIONS = 8, 12
TINY_GRID = {"grid.seeds": [0, 1], "train.iterations": FIRST_ITERATIONS, "train.eval_every": 4}


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    """``cli(main, *argv)`` runs a command line as ``python -m`` does: (exit code, stderr)."""

    def call(main: Callable[[list[str] | None], int | None], *argv: str) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            cli_main(main, list(argv))
        return int(stop.value.code or 0), capsys.readouterr().err

    return call


def _one_line_error(code: int, err: str, *parts: str) -> str:
    """The error line of a command that failed with a user error; every part must be in it."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == EXIT_USER_ERROR and len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, glyph_cache: Path) -> tuple[Path, Path]:
    """(experiment file, results folder) of the tiny grid (2 losses x 2 seeds) run twice: the second run's
    ``--set train.iterations`` makes a new grid in the same folder, so the first run's 4 cells are stale."""
    folder = tmp_path_factory.mktemp("faults")
    path = write_tiny_experiment(folder, glyph_cache, TINY_GRID)
    root = folder / "results"
    for sets in ([], ["--set", f"train.iterations={SECOND_ITERATIONS}"]):
        with pytest.raises(SystemExit) as stop:
            cli_main(
                run.main, [str(path), "--results", str(root), "--jobs", "1", "--quiet", "--no-report", *sets]
            )
        assert stop.value.code == 0
    return path, root / "tiny"


@pytest.fixture()
def results_copy(finished_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished results folder (to damage) and the experiment file."""
    path, exp_dir = finished_run
    copy = tmp_path / "results" / "tiny"
    shutil.copytree(exp_dir, copy)
    return path, copy


# ------------------------------------------------------------------ results bound to the configuration


def test_a_rerun_with_another_configuration_reports_only_the_current_grid(
    finished_run: tuple[Path, Path], cli: Runner
) -> None:
    path, exp_dir = finished_run
    current = [
        c.cell_id for c in expand_cells(load_experiment(path, [f"train.iterations={SECOND_ITERATIONS}"]))
    ]
    first = [c.cell_id for c in expand_cells(load_experiment(path))]
    assert grid_cell_ids(exp_dir) == current and not set(current) & set(first)
    assert sorted(stale_cell_ids(exp_dir)) == sorted(first)  # kept on disk, not pooled
    assert {row["cell_id"] for row in tidy_rows(exp_dir)} == set(current)
    table = read_cells(exp_dir)
    test_r1 = table[
        (table["split"] == "test") & (table["metric"] == "recall@1") & (table["weights"] == "final")
    ]
    assert test_r1.groupby("row")["seed"].count().to_dict() == {"Binomial": 2, "MS": 2}  # n = seeds, not 4
    report = write_report(exp_dir, reference=False).read_text()
    assert "stale: 4 cell folder(s)" in report and all(cell in report for cell in first[:4])
    code, err = cli(
        run.main,
        str(path),
        "--results",
        str(exp_dir.parent),
        "--jobs",
        "1",
        "--no-report",
        "--set",
        f"train.iterations={SECOND_ITERATIONS}",
    )
    assert code == 0 and "stale: 4 cell folder(s)" in err and "4 already finished" in err


def test_a_file_without_a_name_writes_to_its_own_folder_not_its_bases(tmp_path: Path) -> None:
    base = {"name": "shared", "grid": {"losses": ["ms"], "datasets": ["glyphs"], "seeds": [0]}}
    (tmp_path / "base-exp.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "one-more-seed.yaml").write_text("base: base-exp.yaml\ngrid: {seeds: [0, 1]}\n")
    assert load_experiment(tmp_path / "base-exp.yaml").name == "shared"
    assert load_experiment(tmp_path / "one-more-seed.yaml").name == "one-more-seed"


# ------------------------------------------------------------------------------------ damaged files


def test_a_truncated_cells_table_is_rebuilt_from_the_cells(
    results_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, exp_dir = results_copy
    table = exp_dir / "cells.csv"
    whole = table.read_text()
    for cut in (whole[: len(whole) // 3], whole[: whole.index("\n") + 1], ""):
        table.write_text(cut)
        assert cells_table_mismatch(exp_dir) is not None
        cells = read_cells(exp_dir)
        assert f"note: {table}: did not match" in capsys.readouterr().err
        assert cells["cell_id"].nunique() == 4 and table.read_text() == whole
    assert cells_table_mismatch(exp_dir) is None


def _finished_cell(exp_dir: Path) -> CellPaths:
    return CellPaths(exp_dir / "cells" / grid_cell_ids(exp_dir)[0])


@pytest.mark.parametrize(
    ("damage", "name", "problem"),
    [
        (lambda p: p.final.write_text('{"status": "finis'), "final.json", "not valid JSON"),
        (lambda p: p.final.write_text("[1, 2]"), "final.json", "expected a JSON object, got list"),
        (
            lambda p: p.final.write_text('{"status": "finished", "metrics": {"final": 3}}'),
            "final.json",
            "'metrics'",
        ),
        (lambda p: (p.final.unlink(), p.status.write_text('{"stat')), "status.json", "not valid JSON"),
        (lambda p: (p.final.unlink(), p.status.write_bytes(b"\xff\xfe{")), "status.json", "not UTF-8"),
    ],
)
def test_a_damaged_cell_file_stops_run_and_check_with_one_line_naming_it(
    results_copy: tuple[Path, Path],
    cli: Runner,
    damage: Callable[[CellPaths], object],
    name: str,
    problem: str,
) -> None:
    path, exp_dir = results_copy
    paths = _finished_cell(exp_dir)
    damage(paths)
    argv = (str(path), "--results", str(exp_dir.parent), "--set", f"train.iterations={SECOND_ITERATIONS}")
    for extra in (["--check"], ["--jobs", "1", "--no-report"]):
        code, err = cli(run.main, *argv, *extra)
        _one_line_error(code, err, str(paths.root / name), problem, "delete its cell folder and re-run")


def test_a_damaged_config_json_stops_the_table_with_one_line(
    results_copy: tuple[Path, Path], cli: Runner
) -> None:
    path, exp_dir = results_copy
    paths = _finished_cell(exp_dir)
    paths.config.write_text(json.dumps({"cell_id": paths.root.name}))
    before = (exp_dir / "cells.csv").read_bytes()
    code, err = cli(
        run.main,
        str(path),
        "--results",
        str(exp_dir.parent),
        "--jobs",
        "1",
        "--no-report",
        "--set",
        f"train.iterations={SECOND_ITERATIONS}",
    )
    _one_line_error(code, err, str(paths.config), "field 'experiment' is missing")
    assert (exp_dir / "cells.csv").read_bytes() == before


def test_a_corrupt_checkpoint_is_one_line_saying_to_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    files.atomic_torch_save(path, {"model": {"w": torch.ones(3)}, "iteration": 4})
    assert load_checkpoint(path, ("model", "iteration"))["iteration"] == 4
    with pytest.raises(DamagedFileError, match="lacks optimizer; delete it to restart the cell from scratch"):
        load_checkpoint(path, ("model", "optimizer"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedFileError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: damaged file, not a readable checkpoint")
    assert str(caught.value).endswith("delete it to restart the cell from scratch")


def test_a_corrupt_checkpoint_stops_the_run_with_one_line_and_deleting_it_restarts_the_cell(
    results_copy: tuple[Path, Path], cli: Runner
) -> None:
    path, exp_dir = results_copy
    paths = _finished_cell(exp_dir)  # made an interrupted cell: no final.json, a damaged checkpoint
    paths.final.unlink()
    paths.status.write_text(json.dumps({"status": "running", "reason": None}))
    paths.checkpoint.write_bytes(b"PK\x03\x04 cut short")
    argv = (
        str(path),
        "--results",
        str(exp_dir.parent),
        "--jobs",
        "1",
        "--no-report",
        "--quiet",
        "--set",
        f"train.iterations={SECOND_ITERATIONS}",
    )
    code, err = cli(run.main, *argv)
    _one_line_error(code, err, str(paths.checkpoint), "delete it to restart the cell from scratch")
    paths.checkpoint.unlink()
    code, err = cli(run.main, *argv)
    assert code == 0 and paths.status_value() == "finished"


def test_a_finished_cell_that_still_says_running_counts_as_finished(
    results_copy: tuple[Path, Path], cli: Runner
) -> None:
    path, exp_dir = results_copy  # kill -9 between final.json and status.json, before the checkpoint went
    paths = _finished_cell(exp_dir)
    paths.status.write_text(json.dumps({"status": "running", "reason": None}))
    paths.checkpoint.write_bytes(b"left over")
    assert paths.status_value() == "finished"
    assert {r["status"] for r in tidy_rows(exp_dir) if r["cell_id"] == paths.root.name} == {"finished"}
    code, err = cli(
        run.main,
        str(path),
        "--results",
        str(exp_dir.parent),
        "--check",
        "--set",
        f"train.iterations={SECOND_ITERATIONS}",
    )
    assert code == 0
    code, err = cli(
        run.main,
        str(path),
        "--results",
        str(exp_dir.parent),
        "--jobs",
        "1",
        "--no-report",
        "--set",
        f"train.iterations={SECOND_ITERATIONS}",
    )
    assert code == 0 and "0 cells finished, 4 already finished" in err


# ------------------------------------------------------------------------------------ config faults

GRID = "grid: {losses: [ms], datasets: [glyphs], seeds: [0]}\n"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("grid: {losses: [ms, ms], datasets: [glyphs]}", ["grid.losses", "lists {'name': 'ms'} twice"]),
        ("grid: {losses: [ms], datasets: [glyphs], seeds: [0, 0]}", ["grid.seeds", "lists 0 twice"]),
        ("grid: {losses: [ms], datasets: [glyphs, glyphs]}", ["grid.datasets", "lists 'glyphs' twice"]),
        ("grid: {losses: [ms], datasets: [glyphs], embedding_sizes: [8, 8]}", ["lists 8 twice"]),
        (
            "grid: {losses: [ms], datasets: [glyphs], seeds: [-1]}",
            ["grid.seeds[0]", "greater than or equal to 0"],
        ),
        (GRID + "train: {iterations: 5}\ntrain: {iterations: 6}\n", ["line 3", "key 'train' appears twice"]),
        (GRID + "train:\n  iterations: 5\n  iterations: 6\n", ["line 4", "key 'iterations' appears twice"]),
        (
            "grid: {losses: [{name: ms, hparams: {lam: -0.5}}], datasets: [glyphs]}",
            ["lam (lambda", "got -0.5"],
        ),
        ("grid: {losses: [{name: ms, hparams: {eps: -0.1}}], datasets: [glyphs]}", ["eps (epsilon", ">= 0"]),
        (
            GRID + "model: {backbone: small_cnn, pretrained: false, weights: w.pt}\n",
            ["model", "small_cnn", "ignore"],
        ),
        (GRID + "model: {backbone: resnet50, pretrained: false, weights: w.pt}\n", ["pretrained is false"]),
    ],
)
def test_config_faults_are_one_line(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    for part in parts:
        assert part in message


@pytest.mark.parametrize(
    ("content", "part"),
    [
        (GRID.encode("utf-16"), "UTF-16"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff", "not a text file"),
        (b"grid: {}\x00\x00", "NUL bytes"),
    ],
)
def test_a_binary_or_utf16_experiment_file_is_one_line(
    tmp_path: Path, cli: Runner, content: bytes, part: str
) -> None:
    path = tmp_path / "exp.yaml"
    path.write_bytes(content)
    code, err = cli(run.main, str(path), "--check")
    _one_line_error(code, err, str(path), part, "save it as UTF-8 text")


# ------------------------------------------------------------------------ checks that need no training


@pytest.mark.parametrize(
    ("overrides", "part"),
    [
        ({"data.classes_per_batch": 19}, "data.classes_per_batch is 19 but glyphs trains on 18 classes"),
        ({"train.select_metric": "recall@8"}, "train.select_metric: 'recall@8' is not measured"),
        ({"train.select_metric": "nmi"}, "'nmi' is not measured"),
        ({"data.val_fraction": 0.0}, "no validation split"),
        (
            {"grid.datasets": ["cub"], "data.root": "/no/such/root"},
            "the data root /no/such/root does not exist",
        ),
        (
            {"model.backbone": "resnet50", "model.pretrained": True, "model.weights": "/no/w.pt"},
            "/no/w.pt not found",
        ),
    ],
)
def test_check_finds_what_would_stop_the_grid_before_any_training(
    tiny_experiment: Callable[..., Path], tmp_path: Path, cli: Runner, overrides: dict, part: str
) -> None:
    path = tiny_experiment(overrides)
    root = tmp_path / "results"
    code, err = cli(run.main, str(path), "--check", "--results", str(root))
    _one_line_error(code, err, part)
    code, err = cli(run.main, str(path), "--results", str(root), "--jobs", "1")
    _one_line_error(code, err, part)
    assert not root.exists()  # nothing was trained or written


# --------------------------------------------------------------------------------- filesystem faults


def _refuse(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """Make every atomic write fail like a read-only folder (EACCES) or a full disk (ENOSPC, at fsync)."""
    if number == errno.ENOSPC:

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(files.os, "fsync", full)
        return

    def refuse(*args: object, dir: Path | None = None, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.mark.parametrize(
    ("number", "part"), [(errno.EACCES, "check its permissions"), (errno.ENOSPC, "free some")]
)
def test_rerunning_a_finished_folder_that_cannot_be_written_loses_nothing(
    results_copy: tuple[Path, Path], cli: Runner, monkeypatch: pytest.MonkeyPatch, number: int, part: str
) -> None:
    path, exp_dir = results_copy
    before = _snapshot(exp_dir)
    _refuse(monkeypatch, number)
    code, err = cli(
        run.main,
        str(path),
        "--results",
        str(exp_dir.parent),
        "--jobs",
        "1",
        "--set",
        f"train.iterations={SECOND_ITERATIONS}",
    )
    _one_line_error(code, err, str(exp_dir), errno.errorcode[number], part)
    assert _snapshot(exp_dir) == before  # no partial file replaced a good one, no temporary file left


def test_a_report_on_a_folder_that_cannot_be_written_is_one_line(
    results_copy: tuple[Path, Path], cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, exp_dir = results_copy
    (exp_dir / "cells.csv").write_text(
        "experiment,cell_id\n"
    )  # the rebuild must fail too, keeping the old file
    before = _snapshot(exp_dir)
    _refuse(monkeypatch, errno.EACCES)
    code, err = cli(report_main, str(exp_dir), "--no-reference")
    _one_line_error(code, err, str(exp_dir), "EACCES", "check its permissions")
    assert _snapshot(exp_dir) == before


def test_a_results_path_that_is_a_file_is_one_line(
    tiny_experiment: Callable[..., Path], tmp_path: Path, cli: Runner
) -> None:
    path = tiny_experiment()
    in_the_way = tmp_path / "results"
    in_the_way.write_text("not a folder")
    code, err = cli(run.main, str(path), "--results", str(in_the_way), "--jobs", "1")
    _one_line_error(code, err, str(in_the_way), "ENOTDIR", "in the way")
    assert in_the_way.read_text() == "not a folder"


def test_an_os_error_that_is_not_the_users_stays_a_traceback() -> None:
    def main(argv: list[str] | None) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):
        cli_main(main, [])


def test_a_disk_full_table_write_keeps_the_old_table(
    results_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, exp_dir = results_copy
    table = exp_dir / "cells.csv"
    before = table.read_bytes()
    _refuse(monkeypatch, errno.ENOSPC)
    with pytest.raises(OSError) as caught:
        write_cells_table(exp_dir)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(table)
    assert table.read_bytes() == before and not list(exp_dir.glob(".*.tmp"))
