"""Several cells at once and several runs on one folder: --jobs, per-cell locks, leftovers, the reference guard."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WriteExperiment

from harness import launch, run
from harness.config import expand_cells, load_experiment
from harness.errors import UserError
from harness.results import cell_paths, claim_cell, folder_lock, read_pair_weights

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
SHORT = {"train.iterations": 4, "train.eval_every": 4, "train.log_every": 2}


def cell_ids(exp: Path) -> list[str]:
    return [cell.cell_id for cell in expand_cells(load_experiment(exp))]


def final_metrics(exp_dir: Path, cell_id: str) -> dict:
    return json.loads(cell_paths(exp_dir, cell_id).final.read_text())["metrics"]


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.run", *args],
        cwd=ROOT,
        env=ONE_THREAD,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def trainings(stderr: str, cell_id: str) -> int:
    """How many times a run's output says it started training ``cell_id`` (``[k/n] <cell_id>``)."""
    return len(re.findall(rf"^\[\d+/\d+\] {re.escape(cell_id)}$", stderr, flags=re.MULTILINE))


def test_two_jobs_give_the_same_metrics_as_one_bit_for_bit(
    tmp_path: Path, tiny_experiment: WriteExperiment, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tiny_experiment({**SHORT, "grid.seeds": [0, 1]})
    one, two = tmp_path / "one", tmp_path / "two"
    assert run.main([str(exp), "--results", str(one), "--jobs", "1", "--no-report"]) == 0
    assert run.main([str(exp), "--results", str(two), "--jobs", "2", "--no-report"]) == 0
    err = capsys.readouterr().err
    ids = cell_ids(exp)
    assert len(ids) == 4
    for cell_id in ids:
        assert final_metrics(two / "tiny", cell_id) == final_metrics(one / "tiny", cell_id), cell_id
        log = (cell_paths(two / "tiny", cell_id).root / "train.log").read_text()
        assert trainings(log, cell_id) == 1, log  # the cell's own output went to its log, not the terminal
        assert f"[{cell_id}] it 4/4" in log
        assert not (cell_paths(one / "tiny", cell_id).root / "train.log").exists()
    assert re.search(r"^\[4/4\] \S+ finished \(elapsed \S+, about 0s left\)$", err, flags=re.MULTILINE), err
    assert "4 cells finished, 0 already finished (skipped), 0 failed" in err


def test_a_cell_held_by_another_run_is_skipped_untouched_then_picked_up(
    tmp_path: Path, tiny_experiment: WriteExperiment, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tiny_experiment(SHORT)
    exp_dir = tmp_path / "results" / "tiny"
    held, free = (cell_paths(exp_dir, cell_id) for cell_id in cell_ids(exp))
    held.root.mkdir(parents=True)
    theirs = {
        held.status: b'{"status": "running"}',
        held.checkpoint: b"another run's checkpoint",
        held.root / ".final.json.x1.tmp": b"another run writing",
    }
    for path, data in theirs.items():
        path.write_bytes(data)
    args = [str(exp), "--results", str(tmp_path / "results"), "--jobs", "1"]
    with claim_cell(held) as claimed:
        assert claimed
        assert run.main(args) == 0
        err = capsys.readouterr().err
        assert (
            "1 cells finished, 0 already finished (skipped), 0 failed; 1 cells are being trained by another run"
            in err
        )
        assert "report not written: 1 cells not finished yet" in err
        assert trainings(err, held.root.name) == 0 and trainings(err, free.root.name) == 1
        assert {
            path: path.read_bytes() for path in theirs
        } == theirs  # nothing of theirs read, resumed or cleaned
        assert free.status_value() == "finished"

    # the other run died (kill -9): its lock is gone, and what it left is cleaned or resumed
    held.checkpoint.unlink()  # (its real checkpoint would be resumed; this one is not a checkpoint)
    free.checkpoint.write_bytes(b"left by a kill after final.json")
    stale = [free.root / ".evals.csv.x2.tmp", exp_dir / ".cells.csv.x3.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert run.main([*args, "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "1 cells finished, 1 already finished (skipped), 0 failed; table:" in err
    assert trainings(err, held.root.name) == 1 and trainings(err, free.root.name) == 0
    assert held.status_value() == "finished"
    assert not free.checkpoint.exists()
    assert not [p for p in exp_dir.rglob("*.tmp")]


def test_two_runs_on_one_folder_train_each_cell_exactly_once(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment({**SHORT, "grid.seeds": [0, 1]})
    args = [str(exp), "--results", str(tmp_path / "results"), "--jobs", "1", "--no-report"]
    first, second = start_cli(*args), start_cli(*args)
    outputs = [proc.communicate(timeout=240) for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    folders = sorted((tmp_path / "results" / "tiny" / "cells").iterdir())  # the ids the runs computed
    assert len(folders) == 4
    for folder in folders:
        assert sum(trainings(err, folder.name) for _, err in outputs) == 1, (folder.name, outputs)
        assert cell_paths(folder.parent.parent, folder.name).status_value() == "finished"


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in found.read_text().split()] if found.exists() else []


def start_endless_run(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> tuple[subprocess.Popen[str], Path, list[Path]]:
    """``--jobs 2`` on cells that outlive the test, once both cells hold a checkpoint (returned)."""
    exp = tiny_experiment(
        {"train.iterations": 100000, "train.eval_every": 100000, "train.checkpoint_every": 4}
    )
    exp_dir = tmp_path / "results" / "tiny"
    proc = start_cli(str(exp), "--results", str(tmp_path / "results"), "--jobs", "2")
    deadline = time.monotonic() + 120
    while len(checkpoints := sorted(exp_dir.glob("cells/*/checkpoint.pt"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc, exp_dir, checkpoints


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def check_workers_gone_and_cells_resumable(
    workers: list[int], exp_dir: Path, checkpoints: list[Path]
) -> None:
    deadline = time.monotonic() + 30
    while [pid for pid in workers if running(pid)]:
        assert time.monotonic() < deadline, "a worker outlived the interrupted run"
        time.sleep(0.1)
    for path in checkpoints:  # each cell kept its checkpoint (a re-run resumes it) and its lock is free again
        assert path.exists() and json.loads((path.parent / "status.json").read_text())["status"] == "running"
        with claim_cell(cell_paths(exp_dir, path.parent.name)) as claimed:
            assert claimed


@pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes"
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_workers_and_each_cell_keeps_its_checkpoint(
    tmp_path: Path, tiny_experiment: WriteExperiment, signum: signal.Signals
) -> None:
    proc, exp_dir, checkpoints = start_endless_run(tmp_path, tiny_experiment)
    try:
        workers = _children(proc.pid)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err  # 130 for Ctrl-C, 143 for SIGTERM
    assert err.rstrip().endswith("interrupted") and "Traceback" not in err, err
    assert len(workers) >= 2  # the two workers
    check_workers_gone_and_cells_resumable(workers, exp_dir, checkpoints)


@pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes"
)
def test_workers_stop_when_their_run_is_killed_outright(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    proc, exp_dir, checkpoints = start_endless_run(tmp_path, tiny_experiment)
    workers = _children(proc.pid)
    try:
        proc.kill()
        proc.communicate(timeout=30)
        assert len(workers) == 2
        check_workers_gone_and_cells_resumable(workers, exp_dir, checkpoints)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_default_jobs_follow_the_machine(
    monkeypatch: pytest.MonkeyPatch, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment()
    cells = expand_cells(load_experiment(exp))
    monkeypatch.setattr(launch, "visible_gpus", lambda: [])
    monkeypatch.setattr(launch, "usable_cpus", lambda: 8)
    assert launch.default_jobs(cells) == 8  # train.threads: 1
    assert launch.default_jobs(expand_cells(load_experiment(exp, ["train.threads=3"]))) == 2
    assert launch.default_jobs(expand_cells(load_experiment(exp, ["train.threads=16"]))) == 1
    assert launch.default_jobs(expand_cells(load_experiment(exp, ["train.threads=null"]))) == 1
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["2", "5"])
    assert launch.default_jobs(cells) == 2


def test_a_plain_run_never_writes_a_reference(tmp_path: Path, tiny_experiment: WriteExperiment) -> None:
    exp = tiny_experiment(SHORT)
    reference = tmp_path / "results" / "reference"
    with pytest.raises(UserError, match=r"committed reference run.*--update-reference"):
        run.main([str(exp), "--results", str(reference)])
    assert not reference.exists()
    assert run.main([str(exp), "--results", str(reference), "--check"]) == 0
    with pytest.raises(UserError, match="not a reference run"):
        run.main([str(exp), "--results", str(tmp_path / "mine"), "--update-reference"])
    with pytest.raises(SystemExit) as exit_info:
        run.main([str(exp), "--jobs", "0"])
    assert exit_info.value.code == 2
    assert run.REGENERATE_REFERENCE in " ".join(run.build_parser().format_help().split())


def test_an_update_reference_run_aggregates_the_pair_weights(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment(SHORT)
    results_dir = tmp_path / "results" / "reference"
    assert run.main([str(exp), "--results", str(results_dir), "--update-reference", "--no-report"]) == 0
    exp_dir = results_dir / "tiny"
    assert (exp_dir / "pair_weights.npz").is_file() and not list(exp_dir.glob("cells/*/pair_weights.npz"))
    for cell_id in cell_ids(exp):
        assert read_pair_weights(cell_paths(exp_dir, cell_id))["pos"].size


def test_the_folder_lock_waits_then_says_the_folder_is_busy(tmp_path: Path) -> None:
    exp_dir = tmp_path / "results" / "tiny"
    busy = pytest.raises(UserError, match="another run has held the results folder's lock")
    with folder_lock(exp_dir), busy, folder_lock(exp_dir, seconds=0.05):
        pass
    with folder_lock(exp_dir, seconds=0.05):  # free again
        pass
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match=r"ENOTDIR.*in the way"), folder_lock(tmp_path / "a-file" / "tiny"):
        pass
