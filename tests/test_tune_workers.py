"""Several worker processes on one storage, with the real trainer on tiny glyphs: every trial recorded once.

The default-storage test (SQLite under the results folder) runs in the default suite; the journal-file
variant is slow; the PostgreSQL variant runs when ``HARNESS_TEST_POSTGRES_URL`` names a reachable
server (``.ci/run`` starts one) and skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import WriteExperiment
from optuna.trial import TrialState

from harness.config import load_experiment
from harness.tune import HeartbeatConfig, counted_trials, main, open_storage, with_installed_driver
from harness.tune import outputs as tune_outputs

ROOT = Path(__file__).resolve().parent.parent
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WORKERS_PROTOCOL = {  # a few seconds per trial; Hyperband over the 4 iterations, as tune-glyphs.yaml over 240
    "train.iterations": 4,
    "train.eval_every": 2,
    "train.log_every": 2,
    "schedule.milestones": [2],
    "evaluate.metrics": ["recall"],
    "evaluate.ks": [1],
    "study.pruner": {"name": "hyperband", "min_resource": 2, "max_resource": 4, "reduction_factor": 3},
}


@pytest.fixture()
def tune_file(tiny_tune_file: WriteExperiment) -> Path:
    """The tiny tune file, trained for real by the workers."""
    return tiny_tune_file(WORKERS_PROTOCOL)


@pytest.fixture(autouse=True)
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent draws no figures here (test_tune.py checks them): the workers are what is tested."""
    monkeypatch.setattr(tune_outputs, "write_figures", lambda *args, **kwargs: [])


def run_workers(tune_file: Path, results: Path, name: str, trials: int, *storage: str) -> int:
    """Two workers; the study name is a --set override, so a worker that missed the parent's overrides
    fails."""
    argv = [str(tune_file), "--results", str(results), "--workers", "2", "--trials", str(trials), "--quiet"]
    return main([*argv, *storage, "--set", f"study.name={name}"])


def check_each_trial_once(trials: list[Any], total: int, study_dir: Path) -> None:
    counted = counted_trials(trials)
    assert len(counted) == total, [(t.number, t.state, t.user_attrs) for t in trials]
    assert len({t.number for t in trials}) == len(trials), "trial numbers must be unique"
    assert all(t.state in FINISHED for t in trials)
    folders = [t.user_attrs["folder"] for t in counted]
    assert len(set(folders)) == total, "each counted trial trains in its own folder"
    for folder in folders:
        assert (study_dir / folder / "status.json").is_file()
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL for t in surplus)


def test_two_workers_on_the_default_sqlite_file_record_each_trial_once(
    tmp_path: Path, tune_file: Path
) -> None:
    name = "two-workers"
    assert run_workers(tune_file, tmp_path / "results", name, 3) == 0
    study_dir = tmp_path / "results" / name
    storage = open_storage(f"sqlite:///{(study_dir / 'study.db').resolve()}", HeartbeatConfig())
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    check_each_trial_once(trials, 3, study_dir)
    assert any(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs for t in trials]
    experiment = load_experiment(study_dir / "best.yaml")
    assert experiment.grid.seeds == [0, 1, 2] and experiment.grid.datasets == ["glyphs"]
    assert "(3 in all)" in (study_dir / "summary.md").read_text()


@pytest.mark.slow
def test_two_workers_on_a_journal_file_record_each_trial_once_and_a_rerun_tops_up(
    tmp_path: Path, tune_file: Path
) -> None:
    name = "journal-workers"
    journal = f"journal:{tmp_path / 'study.journal'}"
    storage = open_storage(journal, HeartbeatConfig())
    assert run_workers(tune_file, tmp_path / "results", name, 3, "--storage", journal) == 0
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    check_each_trial_once(trials, 3, tmp_path / "results" / name)
    assert (
        run_workers(tune_file, tmp_path / "results", name, 4, "--storage", journal) == 0
    )  # one trial left for two workers
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    check_each_trial_once(trials, 4, tmp_path / "results" / name)


def postgres_url() -> str:
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "HARNESS_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL on loopback and sets it)"
        )
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(with_installed_driver(url), connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        pytest.skip(f"PostgreSQL at HARNESS_TEST_POSTGRES_URL is not reachable: {first}")
    return url


def test_two_workers_on_postgresql_record_each_trial_once(tmp_path: Path, tune_file: Path) -> None:
    url = postgres_url()
    name = f"pg-workers-{uuid.uuid4().hex[:8]}"  # the database outlives the test: a fresh study each time
    try:
        assert run_workers(tune_file, tmp_path / "results", name, 3, "--storage", url) == 0
        storage = open_storage(url, HeartbeatConfig())
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        check_each_trial_once(trials, 3, tmp_path / "results" / name)
    finally:
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=name, storage=url)


# ------------------------------------------------------------------------------- stop signals, real processes

ENDLESS = {
    **WORKERS_PROTOCOL,
    "train.iterations": 100_000,
    "train.eval_every": 50,
    "train.log_every": 50,
    "study.pruner": {"name": "none"},
}  # a trial that surely outlives the test


def start_study(tune_file: Path, results: Path, workers: int) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "harness.tune",
        str(tune_file),
        "--results",
        str(results),
        "--workers",
        str(workers),
        "--trials",
        "3",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for_running_trials(study_dir: Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Until ``count`` trial folders say ``running``: their training has demonstrably started."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        statuses = [json.loads(p.read_text())["status"] for p in study_dir.glob("trials/*/status.json")]
        if statuses.count("running") >= count:
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    pytest.fail(f"{count} trials never started training")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def worker_pids(study_dir: Path) -> list[int]:
    storage = open_storage(f"sqlite:///{(study_dir / 'study.db').resolve()}", HeartbeatConfig())
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials(deepcopy=False)
    return sorted({int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials if "worker" in t.user_attrs})


def check_interrupted(study_dir: Path, signal_name: str, count: int) -> None:
    storage = open_storage(f"sqlite:///{(study_dir / 'study.db').resolve()}", HeartbeatConfig())
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials(deepcopy=False)
    assert len(trials) == count and all(t.state == TrialState.FAIL for t in trials)
    assert {t.user_attrs["interrupted"] for t in trials} == {signal_name} and not counted_trials(trials)
    for t in trials:
        status = json.loads((study_dir / t.user_attrs["folder"] / "status.json").read_text())
        assert status["status"] == "failed" and f"interrupted by {signal_name}" in status["reason"]


@pytest.mark.parametrize(("workers", "signum"), [(1, signal.SIGINT), (2, signal.SIGTERM)])
def test_a_stop_signal_fails_the_running_trials_writes_the_summary_and_leaves_no_process(
    tmp_path: Path, tiny_tune_file: WriteExperiment, workers: int, signum: signal.Signals
) -> None:
    study_dir = tmp_path / "results" / "tiny"
    proc = start_study(tiny_tune_file(ENDLESS), tmp_path / "results", workers)
    try:
        wait_for_running_trials(study_dir, workers, proc)
        pids = worker_pids(study_dir)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"interrupted by {signum.name}: {workers} running trial(s) recorded as failed")
    assert not [pid for pid in pids if alive(pid)], "a worker outlived its parent"
    check_interrupted(study_dir, signum.name, workers)
    assert f"{workers} interrupted, not counted" in (study_dir / "summary.md").read_text()


def test_workers_stop_when_their_parent_is_killed_outright(
    tmp_path: Path, tiny_tune_file: WriteExperiment
) -> None:
    study_dir = tmp_path / "results" / "tiny"
    proc = start_study(tiny_tune_file(ENDLESS), tmp_path / "results", 2)
    pids: list[int] = []
    try:
        wait_for_running_trials(study_dir, 2, proc)
        pids = worker_pids(study_dir)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if alive(pid)], "workers outlived a parent killed with SIGKILL"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    check_interrupted(study_dir, "SIGTERM", 2)
