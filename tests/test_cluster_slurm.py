"""--launcher slurm: the cluster: section, the message without Slurm, and runs against a real Slurm.

The tests marked ``needs_slurm`` submit to the Slurm cluster this machine runs (``.ci/start-slurm`` starts a
one-node one and prints ``HARNESS_TEST_SLURM=1``); elsewhere they skip with the reason. They wait for
jobs by polling with a bounded wait; nothing depends on how long a cell takes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from conftest import WriteExperiment
from test_fair import FAIR, RERUN

from harness import fair, run, tune
from harness.cluster.task import read_job_record
from harness.config import expand_cells, load_experiment
from harness.errors import UserError, cli_main
from harness.fair import load_fair
from harness.results import cell_paths
from harness.studies.storage import open_storage
from harness.tune import counted_trials
from harness.tune.schema import load_tune
from harness.tune.study import _fingerprint

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"train.iterations": 4, "train.eval_every": 4, "train.log_every": 2, "schedule.milestones": [2]}
# long enough that a signal sent once the first checkpoint exists always finds the cell training
LONG = {"train.iterations": 300, "train.eval_every": 100, "train.checkpoint_every": 5, "train.log_every": 50}
WAIT_SECONDS = 240  # the most any one wait for the cluster may take before the test fails


def slurm_missing() -> str | None:
    """Why the Slurm tests cannot run here (None: a Slurm cluster answers)."""
    if not os.environ.get("HARNESS_TEST_SLURM"):
        return "HARNESS_TEST_SLURM is unset: no Slurm cluster to test against (.ci/start-slurm starts one)"
    if shutil.which("sinfo") is None:
        return "HARNESS_TEST_SLURM is set but there is no sinfo on PATH"
    probe = subprocess.run(
        ["sinfo", "--noheader", "--responding"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        return f"sinfo finds no responding Slurm node: {(probe.stderr or probe.stdout).strip()[:200]}"
    return None


SLURM_MISSING = slurm_missing()
needs_slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=SLURM_MISSING or "")
# One cluster of 2 CPUs for all of them: under pytest-xdist they run one after another on one process.
pytestmark = pytest.mark.xdist_group("slurm")


def wait_until(what: str, done: Callable[[], bool], seconds: float = WAIT_SECONDS) -> None:
    """Poll ``done`` every half second; fail naming ``what`` when it is still false after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {seconds:.0f} s for {what}")
        time.sleep(0.5)


def running_jobs(name: str) -> list[str]:
    """The ids of this user's Slurm jobs called ``name`` that are running."""
    command = ["squeue", "--noheader", "--array", f"--name={name}", "--states=RUNNING", "--format=%i"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture()
def job_name() -> Iterator[str]:
    """A job name of this test's own; its jobs are cancelled at the end, whatever happened."""
    name = f"harness-test-{uuid.uuid4().hex[:8]}"
    yield name
    if shutil.which("scancel"):
        subprocess.run(["scancel", f"--name={name}"], check=False)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs inherit the environment


def cell_ids(exp: Path, sets: list[str] | None = None) -> list[str]:
    return [cell.cell_id for cell in expand_cells(load_experiment(exp, sets))]


def final_metrics(exp_dir: Path, cell_id: str) -> dict:
    return json.loads(cell_paths(exp_dir, cell_id).final.read_text())["metrics"]


def job_logs(exp_dir: Path, cell_id: str) -> str:
    """Everything the cell's Slurm jobs wrote to stderr (one slurm-<job>.err per job)."""
    return "".join(p.read_text() for p in sorted(cell_paths(exp_dir, cell_id).root.glob("slurm-*.err")))


def trainings(log: str, cell_id: str) -> int:
    """How many times the cell's jobs started training it (``[k/n] <cell_id>``)."""
    return len(re.findall(rf"^\[\d+/\d+\] {re.escape(cell_id)}$", log, flags=re.MULTILINE))


def slurm_options(job_name: str) -> list[str]:
    """--launcher slurm with a job name of the test's own, polling every second."""
    return ["--launcher", "slurm", "--set", f"cluster.job_name={job_name}", "--set", "cluster.poll_seconds=1"]


def slurm_args(exp: Path, results: Path, job_name: str, *more: str) -> list[str]:
    """harness.run's arguments for ``exp`` on Slurm (``more`` appended)."""
    settle = ["--set", "cluster.settle_seconds=2"]  # one machine: no NFS cache to wait for
    return [str(exp), "--results", str(results), *slurm_options(job_name), *settle, *more]


# ------------------------------------------------------------------------------------------ without Slurm


def test_the_cluster_section_is_validated_and_set_from_the_command_line(
    tiny_experiment: WriteExperiment,
) -> None:
    exp = tiny_experiment({"cluster": {"partition": "gpu", "gpus": 1, "sbatch": {"account": "lab"}}})
    cluster = load_experiment(exp, ["cluster.time_minutes=30", "cluster.max_running=8"]).cluster
    assert (cluster.partition, cluster.gpus, cluster.time_minutes, cluster.max_running) == ("gpu", 1, 30, 8)
    assert cluster.sbatch == {"account": "lab"}
    bad = {
        "cluster.gpu=1": "cluster.gpu",
        "cluster.time_minutes=0": "cluster.time_minutes",
        "cluster.signal_minutes=30": "signal_minutes (30) must be below time_minutes (30)",
        "cluster.sbatch={time: 10}": "'time' is set by cluster.time_minutes",
    }
    for item, expected in bad.items():
        with pytest.raises(UserError) as caught:
            load_experiment(exp, ["cluster.time_minutes=30", item] if "signal" in item else [item])
        assert expected in str(caught.value) and "\n" not in str(caught.value), (item, str(caught.value))


def test_cluster_settings_change_no_cell_id_and_no_study_fingerprint(
    tiny_experiment: WriteExperiment, tiny_tune_file: WriteExperiment
) -> None:
    exp = tiny_experiment()
    settings = [
        "cluster.partition=gpu",
        "cluster.gpus=2",
        "cluster.job_name=mine",
        "cluster.sbatch={qos: low}",
    ]
    assert cell_ids(exp, settings) == cell_ids(exp)
    tune = tiny_tune_file()
    assert _fingerprint(load_tune(tune, settings)) == _fingerprint(load_tune(tune))


def test_slurm_launcher_without_sbatch_is_one_line_exit_2(
    tiny_experiment: WriteExperiment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    with pytest.raises(SystemExit) as caught:
        cli_main(run.main, [str(tiny_experiment()), "--launcher", "slurm"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --launcher slurm: no sbatch, squeue, srun on PATH") and err.count("\n") == 1
    assert "--shard i/n" in err


def test_slurm_only_options_are_refused_elsewhere(tiny_experiment: WriteExperiment) -> None:
    exp = str(tiny_experiment())
    with pytest.raises(UserError, match="--no-wait: only with --launcher slurm"):
        run.main([exp, "--no-wait"])
    with pytest.raises(UserError, match="--jobs 2 with --launcher slurm: each cell is its own Slurm job"):
        run.main([exp, "--launcher", "slurm", "--jobs", "2"])


@pytest.mark.parametrize("tool", ["tune", "fair"])
def test_slurm_workers_refuse_sqlite_in_one_line(
    tool: str, tiny_tune_file: WriteExperiment, tiny_experiment: WriteExperiment, tmp_path: Path
) -> None:
    path = tiny_tune_file() if tool == "tune" else tiny_experiment({**RERUN, "fair": FAIR}, name="tinyfair")
    main = tune.main if tool == "tune" else fair.main
    with pytest.raises(UserError) as caught:
        main([str(path), "--results", str(tmp_path), "--launcher", "slurm", "--workers", "2"])
    message = str(caught.value)
    assert message.startswith("--launcher slurm: the storage sqlite:///") and "\n" not in message
    assert "--storage journal:FILE with FILE on the shared filesystem, or an RDB URL" in message


# ------------------------------------------------------------------------------------------ against Slurm


@needs_slurm
def test_a_grid_on_slurm_trains_each_cell_once_with_the_local_metrics(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tiny_experiment(SHORT)
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    assert run.main([str(exp), "--results", str(local), "--jobs", "1", "--no-report", "--quiet"]) == 0
    capsys.readouterr()
    assert run.main(slurm_args(exp, slurm, job_name)) == 0
    err = capsys.readouterr().err
    assert re.search(r"^submitted 2 cells as Slurm job array \d+ ", err, flags=re.MULTILINE), err
    assert "[slurm] 2/2 cells finished, 0 running, 0 pending, 0 failed" in err
    assert "2 cells finished, 0 already finished (skipped), 0 failed" in err
    exp_dir = slurm / "tiny"
    for cell_id in cell_ids(exp):
        log = job_logs(exp_dir, cell_id)
        assert trainings(log, cell_id) == 1, log
        assert final_metrics(exp_dir, cell_id) == final_metrics(local / "tiny", cell_id), cell_id
        record = read_job_record(cell_paths(exp_dir, cell_id).root)
        assert record["requeues"] == 0 and (cell_paths(exp_dir, cell_id).root / record["stdout"]).is_file()
    assert (exp_dir / "cells.csv").is_file() and (exp_dir / "report.md").is_file()
    assert run.main(slurm_args(exp, slurm, job_name)) == 0  # all finished: nothing is submitted again
    assert "2 already finished (skipped)" in capsys.readouterr().err


@needs_slurm
def test_a_plugin_loss_trains_in_the_slurm_tasks_that_import_it_again(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str
) -> None:
    shutil.copy(ROOT / "docs" / "examples" / "my_loss.py", tmp_path / "my_loss.py")
    overrides = {"grid.losses": ["my_contrastive"], "grid.seeds": [0, 1], "imports": ["my_loss.py"]}
    exp = tiny_experiment({**SHORT, **overrides})
    done = subprocess.run(  # a fresh process: the plugin's loss is registered only where it is imported
        [sys.executable, "-m", "harness.run", *slurm_args(exp, tmp_path / "results", job_name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    exp_dir = tmp_path / "results" / "tiny"
    with open(exp_dir / "cells.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))  # not expand_cells here: that would import the plugin in pytest
    cells = {(row["cell_id"], row["loss"], row["loss_label"], row["status"]) for row in rows}
    assert {cell[1:] for cell in cells} == {("my_contrastive", "MyContrastive", "finished")}
    assert len(cells) == 2
    for cell_id, *_ in cells:
        assert trainings(job_logs(exp_dir, cell_id), cell_id) == 1
    assert all(float(row["value"]) >= 0 for row in rows if row["metric"] == "recall@1")


@needs_slurm
def test_sbatch_refusing_the_array_is_one_line_exit_2(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = slurm_args(
        tiny_experiment(SHORT), tmp_path, job_name, "--set", "cluster.partition=no-such-partition"
    )
    with pytest.raises(SystemExit) as caught:
        cli_main(run.main, args)
    assert caught.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: sbatch refused the job array: invalid partition specified"), err
    assert not any(line.startswith("sbatch:") for line in err), err


@needs_slurm
@pytest.mark.slow
def test_no_wait_then_a_second_submission_watches_the_first_jobs_and_force_retrains_alike(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Slow: four cells trained twice as Slurm jobs (each job starts Python and torch), three submissions."""
    exp = tiny_experiment({**SHORT, "grid.seeds": [0, 1]})
    args = slurm_args(exp, tmp_path, job_name)
    held = ["--set", "cluster.sbatch={hold: true}"]  # the jobs wait until released: still pending below
    assert run.main([*args, *held, "--no-wait"]) == 0
    err = capsys.readouterr().err
    assert f"collect the results, once the jobs are done, with: python -m harness.run {exp} " in err
    assert "--no-wait" not in err.rsplit("with: ", 1)[1]
    assert not (tmp_path / "tiny" / "cells.csv").exists()  # --no-wait returns without collecting
    first = {
        cell_id: read_job_record(cell_paths(tmp_path / "tiny", cell_id).root)["job_id"]
        for cell_id in cell_ids(exp)
    }
    assert run.main([*args, "--no-wait"]) == 0  # a second submission: the cells are in the first one's jobs
    assert "submitted nothing; 4 cells already in jobs" in capsys.readouterr().err
    subprocess.run(["scontrol", "release", next(iter(first.values())).split("_")[0]], check=True)
    assert run.main(args) == 0  # collects: waits for the first submission's jobs
    err = capsys.readouterr().err
    assert "submitted nothing; 4 cells already in jobs" in err, err
    assert "4 cells finished" in err and (tmp_path / "tiny" / "report.md").is_file()
    metrics = {}
    for cell_id, job_id in first.items():
        assert read_job_record(cell_paths(tmp_path / "tiny", cell_id).root)["job_id"] == job_id
        assert trainings(job_logs(tmp_path / "tiny", cell_id), cell_id) == 1
        metrics[cell_id] = final_metrics(tmp_path / "tiny", cell_id)
    assert run.main([*args, "--force"]) == 0  # every cell again, from scratch: the same numbers
    for cell_id in first:
        assert trainings(job_logs(tmp_path / "tiny", cell_id), cell_id) == 2
        assert "resuming" not in job_logs(tmp_path / "tiny", cell_id)
        assert final_metrics(tmp_path / "tiny", cell_id) == metrics[cell_id], cell_id


def start_submitter(args: list[str], module: str = "harness.run") -> subprocess.Popen[str]:
    """``python -m module *args`` in its own process: the command a user leaves waiting."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def trainings_started(exp_dir: Path, cell_id: str) -> int:
    """How many times the cell's jobs got as far as training it (the trainer's ``device ...`` line)."""
    return len(
        re.findall(rf"^\[{re.escape(cell_id)}\] device ", job_logs(exp_dir, cell_id), flags=re.MULTILINE)
    )


@needs_slurm
@pytest.mark.slow
def test_scancel_and_scontrol_requeue_of_running_tasks_resume_them_from_their_checkpoints(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str
) -> None:
    """Slow: two 300-iteration cells trained on Slurm, stopped and resumed, then trained again locally."""
    exp = tiny_experiment(LONG)
    exp_dir = tmp_path / "slurm" / "tiny"
    cancelled, requeued = cell_ids(exp)
    args = slurm_args(exp, tmp_path / "slurm", job_name)
    submitter = start_submitter(args)
    checkpoints = [cell_paths(exp_dir, cell_id).checkpoint for cell_id in (cancelled, requeued)]
    wait_until("both cells to write a checkpoint", lambda: all(p.exists() for p in checkpoints))
    job = {
        cell_id: read_job_record(cell_paths(exp_dir, cell_id).root)["job_id"]
        for cell_id in (cancelled, requeued)
    }
    subprocess.run(["scancel", job[cancelled]], check=True)
    subprocess.run(["scontrol", "requeue", job[requeued]], check=True)
    _, err = submitter.communicate(timeout=WAIT_SECONDS)
    assert submitter.returncode == 1, err  # the cancelled cell failed this run; the requeued one finished
    assert f"{cancelled}: its Slurm job {job[cancelled]} ended without a result" in err, err
    assert cell_paths(exp_dir, cancelled).status_value() == "running"  # stopped mid-way, checkpoint kept
    assert cell_paths(exp_dir, requeued).status_value() == "finished"
    assert read_job_record(cell_paths(exp_dir, requeued).root)["requeues"] == 1
    assert run.main(args) == 0  # the same command again submits the cancelled cell anew
    assert read_job_record(cell_paths(exp_dir, cancelled).root)["job_id"] != job[cancelled]
    local = tmp_path / "local"
    assert run.main([str(exp), "--results", str(local), "--jobs", "1", "--no-report", "--quiet"]) == 0
    for cell_id in (cancelled, requeued):
        resumed = re.findall(r"resuming at iteration (\d+)", job_logs(exp_dir, cell_id))
        assert len(resumed) == 1 and int(resumed[0]) >= 5, job_logs(exp_dir, cell_id)
        assert final_metrics(exp_dir, cell_id) == final_metrics(local / "tiny", cell_id), cell_id


@needs_slurm
@pytest.mark.slow
def test_the_time_limit_signal_requeues_until_max_requeues_then_the_cell_fails_with_the_reason(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str
) -> None:
    """Slow: a 300-iteration cell on Slurm, given twice the signal submitit asks for before the limit."""
    exp = tiny_experiment({**LONG, "grid.losses": ["ms"]})
    (cell_id,) = cell_ids(exp)
    paths = cell_paths(tmp_path / "tiny", cell_id)
    submitter = start_submitter(slurm_args(exp, tmp_path, job_name, "--set", "cluster.max_requeues=1"))
    for started in (1, 2):
        wait_until(
            f"training start number {started}",
            lambda n=started: trainings_started(tmp_path / "tiny", cell_id) == n,
        )
        subprocess.run(["scancel", "--signal=USR2", read_job_record(paths.root)["job_id"]], check=True)
    _, err = submitter.communicate(timeout=WAIT_SECONDS)
    assert submitter.returncode == 1, err
    reason = (
        "stopped 2 times by its time limit or preemption, more than cluster.max_requeues=1 requeues allow"
    )
    assert reason in err and reason in (paths.read_final().reason or ""), err
    resumed = re.findall(r"resuming at iteration \d+", job_logs(tmp_path / "tiny", cell_id))
    assert len(resumed) == 1, job_logs(tmp_path / "tiny", cell_id)
    assert paths.checkpoint.exists()  # running the command again resumes it


@needs_slurm
def test_fair_with_two_slurm_workers_on_a_journal_fills_every_study_to_its_budget(
    tmp_path: Path, tiny_experiment: WriteExperiment, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_experiment({**RERUN, "fair": FAIR}, name="tinyfair")
    journal = tmp_path / "studies.journal"
    argv = [str(path), "--results", str(tmp_path / "results"), "--quiet", "--studies-only", "--workers", "2"]
    assert fair.main([*argv, *slurm_options(job_name), "--storage", f"journal:{journal}"]) == 0
    assert re.search(
        r"^submitted 2 workers as Slurm job array \d+ ", capsys.readouterr().err, flags=re.MULTILINE
    )
    setup = load_fair(path)
    storage = open_storage(f"journal:{journal}", setup.fair.heartbeat)
    for study in setup.studies:
        stored = optuna.load_study(study_name=study.name, storage=storage).get_trials()
        assert len(stored) == FAIR["trials"] and len(counted_trials(stored)) == FAIR["trials"], study.key
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored), study.key
        assert len({t.user_attrs["folder"] for t in stored}) == FAIR["trials"]


@needs_slurm
@pytest.mark.slow
def test_tune_with_two_slurm_workers_on_a_journal_fills_the_study(
    tmp_path: Path, tiny_tune_file: WriteExperiment, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Slow: the fair test's Slurm worker path once more, for harness.tune (two jobs starting torch)."""
    path, journal = tiny_tune_file(), tmp_path / "study.journal"
    argv = [str(path), "--results", str(tmp_path / "results"), "--quiet", "--workers", "2"]
    assert tune.main([*argv, *slurm_options(job_name), "--storage", f"journal:{journal}"]) == 0
    setup = load_tune(path)
    study = optuna.load_study(
        study_name=setup.name, storage=open_storage(f"journal:{journal}", setup.study.heartbeat)
    )
    stored = study.get_trials()
    assert len(stored) == setup.study.trials == len(counted_trials(stored))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored)
    assert re.search(
        r"^submitted 2 workers as Slurm job array \d+ ", capsys.readouterr().err, flags=re.MULTILINE
    )
    assert (tmp_path / "results" / setup.name / "summary.md").is_file()


@needs_slurm
@pytest.mark.slow
def test_a_slurm_worker_told_its_time_limit_is_near_stops_its_trial_and_is_requeued(
    tmp_path: Path, tiny_tune_file: WriteExperiment, job_name: str
) -> None:
    """Slow: three 300-iteration trials on two Slurm workers, one of them signalled and requeued."""
    path, journal, results = (
        tiny_tune_file({**LONG}, trials=3),
        tmp_path / "study.journal",
        tmp_path / "results",
    )
    setup = load_tune(path)
    argv = [str(path), "--results", str(results), "--quiet", "--workers", "2"]
    parent = start_submitter(
        [*argv, *slurm_options(job_name), "--storage", f"journal:{journal}"], "harness.tune"
    )

    def training_trial() -> bool:
        statuses = (results / setup.name).glob("**/status.json")
        return any(json.loads(p.read_text())["status"] == "running" for p in statuses)

    wait_until("a worker to train a trial", training_trial)
    signalled = running_jobs(job_name)[0]
    subprocess.run(["scancel", "--signal=USR2", signalled], check=True)
    _, err = parent.communicate(timeout=WAIT_SECONDS)
    assert parent.returncode == 0, err
    storage = open_storage(f"journal:{journal}", setup.study.heartbeat)
    stored = optuna.load_study(study_name=setup.name, storage=storage).get_trials()
    counted = counted_trials(stored)
    assert len(counted) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    assert len([t for t in stored if t.user_attrs.get("interrupted")]) == 1  # the signalled worker's trial
    logs = "".join(p.read_text() for p in (results / setup.name / "slurm").glob("*/*_log.out"))
    assert f"Requeued job {signalled}" in logs
