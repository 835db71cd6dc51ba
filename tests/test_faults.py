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
from data_trees import make_cub
from test_data_loaders import LIST_FILE_FAULTS, replace_line, share_cub_image

from harness import files, run
from harness.config import expand_cells, load_experiment
from harness.errors import EXIT_USER_ERROR, DamagedFileError, DataError, UserError, cli_main
from harness.fair.cli import main as fair_main
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
from harness.tune import counted_trials
from harness.tune.cli import main as tune_main
from harness.tune.trials import interrupted_trials

Runner = Callable[..., tuple[int, str]]
ROOT = Path(__file__).resolve().parent.parent
FIRST_ITERATIONS, SECOND_ITERATIONS = 8, 12
TINY_GRID = {
    "grid.seeds": [0, 1],
    "train.iterations": FIRST_ITERATIONS,
    "train.eval_every": 4,
    "schedule.milestones": [4],
}


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


def _cut(path: Path, keep: float) -> None:
    """Truncate ``path`` to a fraction of its bytes (``keep`` < 0: drop that many bytes from the end)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep >= 0 else data[: int(keep)])


DAMAGED_RECORDS = [
    ("final.json", 0.1, "not valid JSON"),
    ("final.json", 0.5, "not valid JSON"),
    ("final.json", 0.95, "not valid JSON"),
    ("final.json", -2, "not valid JSON"),
    ("status.json", 0.5, "not valid JSON"),
    ("config.json", 0.5, "not valid JSON"),
    ("config.json", 0.0, "not valid JSON"),
]


@pytest.mark.parametrize(("name", "keep", "problem"), DAMAGED_RECORDS)
def test_check_reads_back_every_cell_record_stale_and_other_shards_included(
    results_copy: tuple[Path, Path], cli: Runner, name: str, keep: float, problem: str
) -> None:
    """A truncated record of a cell --check does not list (a stale cell, another shard's) is found too,
    so no damaged cell is counted finished (or pooled by a later report)."""
    path, exp_dir = results_copy
    argv = (str(path), "--results", str(exp_dir.parent), "--check")
    stale = CellPaths(exp_dir / "cells" / stale_cell_ids(exp_dir)[0])
    other_shard = CellPaths(exp_dir / "cells" / grid_cell_ids(exp_dir)[1])
    for paths, extra in ((stale, ()), (other_shard, ("--shard", "0/2"))):
        victim = paths.root / name
        whole = victim.read_bytes()
        _cut(victim, keep)
        code, err = cli(run.main, *argv, "--set", f"train.iterations={SECOND_ITERATIONS}", *extra)
        _only_line(code, err, f"{victim}: damaged file", problem, "delete its cell folder")
        victim.write_bytes(whole)
    code, err = cli(run.main, *argv, "--set", f"train.iterations={SECOND_ITERATIONS}")
    assert code == 0, err


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


DEEP = 5000
TOO_DEEP = "nested more than 50 levels deep; flatten the file"
# Experiment files no parser should choke on: each is one line, never a RecursionError.
TEXT_FAULTS = [
    (GRID + "data: " + "[" * DEEP + "]" * DEEP + "\n", (TOO_DEEP,)),
    (GRID + "data: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n", (TOO_DEEP,)),
    ("".join(" " * level + "k:\n" for level in range(DEEP)), (TOO_DEEP,)),
    (GRID + "description: &loop [1, *loop]\n", (TOO_DEEP,)),
    (GRID + "train: {iterations: 1e3}\n", ("train.iterations", "got 1000.0", "write a whole number")),
    (GRID + "optim: {lr_head: '1e-3'}\n", ("optim.lr_head", "got '1e-3'", "without quotes")),
]


@pytest.mark.parametrize(("text", "parts"), TEXT_FAULTS)
def test_a_malformed_experiment_file_is_one_line(
    tmp_path: Path, cli: Runner, text: str, parts: tuple[str, ...]
) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    code, err = cli(run.main, str(path), "--check")
    _only_line(code, err, str(path), *parts)


# ------------------------------------------------------------------------ checks that need no training


def _only_line(code: int, err: str, *parts: str) -> str:
    """:func:`_one_line_error`, and that line is all the command printed on stderr."""
    line = _one_line_error(code, err, *parts)
    assert err.splitlines() == [line], err
    return line


MS_PAPER = {"name": "ms", "preset": "paper"}
NOT_A_NUMBER = "a boolean is not a number"
AXIS = "which the grid sets"
SAME_OVERRIDES = "have the same overrides"
NAME_CHARS = "use ASCII letters, digits"
NOT_IN_GRID = "is not in grid.datasets"

# Settings of the tiny experiment (dotted keys, as --set) that must stop --check and a run with one line.
CONFIG_FAULTS = [
    # types are never coerced: a boolean or a quoted number is not a number, a number is not a switch
    ({"train.iterations": True}, ("train.iterations", NOT_A_NUMBER)),
    ({"train.iterations": "20"}, ("train.iterations", "got '20'", "without quotes")),
    ({"train.iterations": 20.5}, ("train.iterations", "whole number")),
    ({"data.val_fraction": True}, ("data.val_fraction", NOT_A_NUMBER)),
    ({"data.crop_scale": [True, 1.0]}, ("data.crop_scale[0]", NOT_A_NUMBER)),
    ({"grid.seeds": [True]}, ("grid.seeds[0]", NOT_A_NUMBER)),
    ({"grid.embedding_sizes": [True]}, ("grid.embedding_sizes", NOT_A_NUMBER)),
    ({"model.freeze_bn": 1}, ("model.freeze_bn", "write true or false")),
    ({"grid.losses": [{"name": "ms", "hparams": {"alpha": True}}]}, ("alpha must be a number", "True")),
    ({"grid.losses": [{"name": "ms", "hparams": {"beta": "50"}}]}, ("beta must be a number", "'50'")),
    # protocols that would do nothing, or not what they say
    ({"schedule.milestones": [30]}, ("schedule.milestones: 30", "never change the learning rate", "1 .. 23")),
    ({"schedule.milestones": [-4]}, ("schedule.milestones: -4", "never change")),
    ({"schedule.milestones": [12, 6]}, ("schedule.milestones", "strictly increasing")),
    ({"schedule.milestones": [6, 6]}, ("schedule.milestones", "strictly increasing")),
    ({"data.crop_scale": [0.9, 0.5]}, ("data.crop_scale", "0 < smallest <= largest <= 1")),
    ({"data.crop_scale": [0.0, 1.0]}, ("data.crop_scale", "0 < smallest")),
    ({"data.crop_scale": [0.5, 1.5]}, ("data.crop_scale", "largest <= 1")),
    ({"train.eval_every": 30}, ("train.eval_every: 30", "selects nothing", "train.select_on: final")),
    ({"optim.momentum": 0.5}, ("optim.momentum: 0.5", "adam has no momentum", "sgd")),
    ({"evaluate.ks": [1, 1, 2]}, ("evaluate.ks", "K 1 is listed twice")),
    # grids that would train one thing twice, or report two things under one name
    ({"grid.losses": ["ms", MS_PAPER]}, ("grid.losses", "[1] trains the same loss as [0]")),
    ({"grid.losses": ["ms", {"name": "ms", "hparams": {"beta": 50}}]}, ("[1] trains the same loss as [0]",)),
    ({"grid.losses": ["ms", {"name": "ms", "hparams": {"beta": 45}}]}, ("under one label 'MS'", "own label")),
    (
        {"grid.losses": [{"name": "ms", "label": "A"}, {"name": "binomial", "label": "A"}]},
        ("grid.losses", "under one label 'A'"),
    ),
    (
        {"grid.variants": {"a": {"data.workers": 1}, "b": {"data.workers": 1}}},
        ("'a' and 'b'", SAME_OVERRIDES),
    ),
    ({"grid.variants": {"a": {}, "b": {}}}, ("grid.variants", SAME_OVERRIDES)),
    ({"grid.variants": {"a": {"seed": 3}}}, ("variant 'a' overrides 'seed'", AXIS)),
    ({"grid.variants": {"a": {"loss.name": "binomial"}}}, ("overrides 'loss.name'", AXIS)),
    ({"grid.variants": {"a": {"loss": MS_PAPER}}}, ("overrides 'loss'", AXIS)),
    ({"grid.variants": {"a": {"embedding_size": 8}}}, ("overrides 'embedding_size'", AXIS)),
    ({"grid.variants": {"a": {"experiment": "other"}}}, ("overrides 'experiment'", AXIS)),
    ({"grid.variants": {"a": {"variant": "b"}}}, ("overrides 'variant'", AXIS)),
    (
        {"dataset_overrides": {"glyphs": {"seed": 1}}},
        ("dataset_overrides", "'glyphs' overrides 'seed'", AXIS),
    ),
    ({"dataset_overrides": {"cub": {"data.workers": 1}}}, ("dataset_overrides", "'cub'", NOT_IN_GRID)),
    ({"grid.embedding_sizes": {"glyphs": [16], "sop": [16]}}, ("grid.embedding_sizes", "'sop'", NOT_IN_GRID)),
    # names that become folders and cell ids
    ({"grid.variants": {"a/b": {}}}, ("grid.variants", "got 'a/b'", NAME_CHARS)),
    ({"grid.variants": {"": {}}}, ("grid.variants", "got ''", NAME_CHARS)),
    ({"grid.variants": {"two words": {}}}, ("got 'two words'", NAME_CHARS)),
    ({"grid.variants": {"caf\u00e9": {}}}, ("grid.variants", NAME_CHARS)),
    ({"grid.variants": {"a..b": {}}}, ("'a..b'", "'..' has no place")),
    ({"grid.variants": {"v" * 101: {}}}, ("grid.variants", "at most 100 characters")),
    ({"name": "reference"}, ("name", "'reference' is reserved", "committed reference runs")),
    ({"name": "paper"}, ("name", "'paper' is reserved")),
    ({"name": "../elsewhere"}, ("name", NAME_CHARS)),
    ({"name": ""}, ("name", NAME_CHARS)),
]

PREFLIGHT_FAULTS = [
    ({"data.classes_per_batch": 19}, ("data.classes_per_batch is 19 but glyphs trains on 18 classes",)),
    ({"train.select_metric": "recall@8"}, ("train.select_metric: 'recall@8' is not measured",)),
    ({"train.select_metric": "nmi"}, ("'nmi' is not measured",)),
    ({"data.val_fraction": 0.0}, ("no validation split",)),
    (
        {"grid.datasets": ["cub"], "data.root": "/no/such/root", "data.options": {}},
        ("the data root /no/such/root does not exist",),
    ),
    (
        {"model.backbone": "resnet50", "model.pretrained": True, "model.weights": "/no/w.pt"},
        ("/no/w.pt not found",),
    ),
    ({"data.options.num_clases": 48}, ("unknown data option 'num_clases'", "did you mean 'num_classes'?")),
    ({"data.cache_dir": f"{os.devnull}/glyphs"}, ("data.cache_dir", f"{os.devnull} is not a folder")),
    (
        {"data.samples_per_class": 11},
        ("data.samples_per_class is 11", "no glyphs training class has more than 10"),
    ),
    ({"evaluate.ks": [1, 60]}, ("evaluate.ks: K 60", "the 59 images a val query is ranked against")),
]


@pytest.mark.parametrize(("overrides", "parts"), CONFIG_FAULTS + PREFLIGHT_FAULTS)
def test_check_finds_what_would_stop_the_grid_before_any_training(
    tiny_experiment: Callable[..., Path], tmp_path: Path, cli: Runner, overrides: dict, parts: tuple[str, ...]
) -> None:
    path = tiny_experiment(overrides)
    root = tmp_path / "results"
    code, err = cli(run.main, str(path), "--check", "--results", str(root))
    _only_line(code, err, *parts)
    code, err = cli(run.main, str(path), "--results", str(root), "--jobs", "1")
    _only_line(code, err, *parts)
    assert not root.exists()  # nothing was trained or written


# ------------------------------------------------------------------------------ dataset faults at --check

# The tiny experiment on the CUB fixture tree of test_data_loaders (4 train classes x 3 images, half of them
# validation classes; 3 test classes): it passes --check as it is.
ON_CUB = {
    "grid.datasets": ["cub"],
    "data.strict_counts": False,
    "data.options": {},
    "data.classes_per_batch": 2,
    "data.samples_per_class": 2,
    "data.val_fraction": 0.5,
    "evaluate.ks": [1, 2],
}
BIRD = Path("images") / "001.Bird_1"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:120])


DATA_FAULTS = [
    (
        lambda f: (f / BIRD / "Bird_1_0.jpg").unlink(),
        {},
        ("1 of 6 image files are missing or empty", "Bird_1_0.jpg (missing)"),
    ),
    (
        lambda f: [
            (f / "images" / name).write_bytes(b"")
            for name in (
                "001.Bird_1/Bird_1_1.jpg",
                "002.Bird_2/Bird_2_0.jpg",
                "002.Bird_2/Bird_2_1.jpg",
                "002.Bird_2/Bird_2_2.jpg",
            )
        ],
        {},
        ("image files are missing or empty", "Bird_1_1.jpg (empty), ", "and 1 more; restore them from"),
    ),
    (lambda f: share_cub_image(f), {}, ("listed twice", "class 1 (train) and class 101 (test)", "leaks")),
    (lambda f: replace_line(f / "image_class_labels.txt", 2, "2 2"), {}, ("in the folder of class 1",)),
    (
        lambda f: ((f / "image_class_labels.txt").unlink(), os.mkfifo(f / "image_class_labels.txt")),
        {},
        ("image_class_labels.txt is a FIFO, not a regular file",),
    ),
    (lambda f: None, {"data.samples_per_class": 4}, ("data.samples_per_class is 4", "more than 3 images")),
    (
        lambda f: None,
        {"evaluate.ks": [1, 2, 8]},
        ("evaluate.ks: K 8", "the 5 images a val query is ranked against"),
    ),
]


@pytest.mark.parametrize(("damage", "overrides", "parts"), DATA_FAULTS)
def test_check_finds_a_damaged_dataset_before_any_training(
    tiny_experiment: Callable[..., Path],
    tmp_path: Path,
    cli: Runner,
    damage: Callable[[Path], object],
    overrides: dict,
    parts: tuple[str, ...],
) -> None:
    damage(make_cub(tmp_path / "data"))
    path = tiny_experiment({**ON_CUB, "data.root": str(tmp_path / "data"), **overrides})
    root = tmp_path / "results"
    for argv in (["--check"], ["--jobs", "1"]):
        code, err = cli(run.main, str(path), "--results", str(root), *argv)
        _only_line(code, err, *parts)
    assert not root.exists()


def test_check_decode_finds_a_truncated_image_that_a_stat_cannot(
    tiny_experiment: Callable[..., Path], tmp_path: Path, cli: Runner
) -> None:
    folder = make_cub(tmp_path / "data")
    _truncate(folder / BIRD / "Bird_1_2.jpg")
    (folder / BIRD / "Bird_1_0.jpg").write_bytes(b"not a jpeg at all")
    path = tiny_experiment({**ON_CUB, "data.root": str(tmp_path / "data")})
    code, err = cli(run.main, str(path), "--check")
    assert code == 0, err  # both files are there and not empty
    code, err = cli(run.main, str(path), "--check", "--decode")
    _only_line(
        code,
        err,
        "2 of 6 image files are unreadable",
        "Bird_1_0.jpg (cannot identify image file",
        "Bird_1_2.jpg (",
    )


# ------------------------------------------------------------------------------- command-line mistakes

RUN, TUNE, FAIR, REPORT = (
    "python -m harness.run",
    "python -m harness.tune",
    "python -m harness.fair",
    "python -m harness.report",
)
ARGUMENT_FAULTS = [
    (run.main, ["exp.yaml", "--jobs", "0"], (RUN, "argument --jobs: '0'", "at least 1")),
    (run.main, ["exp.yaml", "--jobs", "two"], (RUN, "argument --jobs: 'two'")),
    (run.main, ["exp.yaml", "--shard", "-1/2"], (RUN, "argument --shard: expected one argument")),
    (run.main, ["exp.yaml", "--chek"], (RUN, "unrecognized arguments: --chek")),
    (run.main, [], (RUN, "the following arguments are required: experiment")),
    (tune_main, ["tune.yaml", "--workers", "two"], (TUNE, "argument --workers: invalid int value: 'two'")),
    (tune_main, ["tune.yaml", "--trails", "4"], (TUNE, "unrecognized arguments: --trails")),
    (fair_main, ["fair.yaml", "--jobs", "x"], (FAIR, "argument --jobs: invalid int value: 'x'")),
    (fair_main, [], (FAIR, "the following arguments are required: file")),
    (report_main, ["results/x", "--margin", "wide"], (REPORT, "argument --margin: invalid float value")),
    (report_main, ["results/x", "--reference", "a", "--no-reference"], (REPORT, "not allowed with argument")),
]


@pytest.mark.parametrize(("main", "argv", "parts"), ARGUMENT_FAULTS)
def test_a_command_line_mistake_is_one_error_line_with_the_help_hint(
    cli: Runner, main: Callable[[list[str] | None], int | None], argv: list[str], parts: tuple[str, ...]
) -> None:
    code, err = cli(main, *argv)
    line = _only_line(code, err, *parts)
    assert line.endswith(f"(see {parts[0]} --help)") and "usage:" not in err


# ------------------------------------------------------------------------------------- tune faults

TUNE_FAULTS = [
    ({"study.seeds": [-1]}, ("study.seeds[0]", "greater than or equal to 0", "got -1")),
    ({"study.seeds": [True]}, ("study.seeds[0]", NOT_A_NUMBER)),
    ({"study.name": "reference"}, ("study.name", "'reference' is reserved")),
    ({"data.classes_per_batch": 40}, ("data.classes_per_batch is 40 but glyphs trains on 18 classes",)),
]


@pytest.mark.parametrize(("overrides", "parts"), TUNE_FAULTS)
def test_a_tune_fault_is_one_line_before_any_trial(
    tiny_tune_file: Callable[..., Path], tmp_path: Path, cli: Runner, overrides: dict, parts: tuple[str, ...]
) -> None:
    path = tiny_tune_file(overrides)
    results = tmp_path / "results"
    code, err = cli(tune_main, str(path), "--results", str(results), "--quiet")
    _only_line(code, err, *parts)
    assert not list(results.glob("*/trials"))  # no trial started


def test_a_user_error_inside_a_trial_is_one_line_and_the_trial_is_retried_later(
    tiny_tune_file: Callable[..., Path], tmp_path: Path, cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What only training finds (here: a damaged image) stops the study with its own line, never inside
    Optuna's logged traceback; the trial counts as interrupted, so the next run retries it."""
    import optuna

    from harness import train

    def damaged(*args: object, **kwargs: object) -> None:
        raise DataError("glyphs: cannot read image x.png (truncated); delete the glyph cache")

    monkeypatch.setattr(train, "train_cell", damaged)
    path = tiny_tune_file()
    results = tmp_path / "results"
    code, err = cli(tune_main, str(path), "--results", str(results), "--quiet")
    _only_line(code, err, "cannot read image x.png", "delete the glyph cache")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{results / 'tiny' / 'study.db'}")
    (trial,) = study.get_trials()
    assert trial.user_attrs["interrupted"] == "a user error" and "x.png" in trial.user_attrs["fail_reason"]
    assert counted_trials(study.get_trials()) == [] and interrupted_trials(study.get_trials()) == [trial]


# ------------------------------------------------------------------------------- the corpus, documented

FAULT_CORPORA = {
    "experiment settings and files": CONFIG_FAULTS + PREFLIGHT_FAULTS + TEXT_FAULTS,
    "dataset trees": DATA_FAULTS + LIST_FILE_FAULTS,
    "command lines": ARGUMENT_FAULTS,
    "tune files": TUNE_FAULTS,
    "damaged cell records": DAMAGED_RECORDS,
}


def test_docs_give_the_size_of_the_fault_corpus() -> None:
    """docs/running.md says how many malformed inputs the tests above refuse with one line: kept true here."""
    text = " ".join((ROOT / "docs" / "running.md").read_text().split())
    total = sum(len(cases) for cases in FAULT_CORPORA.values())
    assert f"**{total} cases, all one line**" in text
    for label, cases in FAULT_CORPORA.items():
        assert f"{len(cases)} {label}" in text, label


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
