"""The runner and trainer end to end on a tiny glyphs grid: results, resume, kill -9, shards, failures,
torchrun."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import WriteExperiment

from harness import run

ROOT = Path(__file__).resolve().parent.parent

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def cells_of(results: Path, name: str = "tiny") -> dict[str, Path]:
    return {p.name: p for p in sorted((results / name / "cells").iterdir())}


def final_metrics(cell: Path) -> dict:
    return json.loads((cell / "final.json").read_text())["metrics"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.run", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=ONE_THREAD,
    )


def test_grid_runs_end_to_end_and_writes_every_result(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment()
    results = tmp_path / "results"
    assert run.main([str(exp), "--results", str(results), "--quiet", "--no-report"]) == 0
    cells = cells_of(results)
    assert len(cells) == 2
    for cell in cells.values():
        for name in (
            "config.json",
            "env.json",
            "status.json",
            "train_log.csv",
            "evals.csv",
            "final.json",
            "pair_weights.npz",
        ):
            assert (cell / name).is_file(), name
        assert not (cell / "checkpoint.pt").exists()
        final = json.loads((cell / "final.json").read_text())
        assert final["status"] == "finished" and final["select_on"] == "val"
        assert set(final["metrics"]) == {"final", "selected"}
        assert set(final["metrics"]["final"]) == {"test", "val"}
        values = final["metrics"]["final"]["test"]
        assert set(values) == {"recall@1", "recall@2", "recall@4", "map_at_r"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
        assert values["recall@1"] <= values["recall@2"] <= values["recall@4"]
        assert final["selected_iteration"] in (8, 16, 24)
        log = list(csv.DictReader((cell / "train_log.csv").open()))
        assert [int(r["iteration"]) for r in log] == [4, 8, 12, 16, 20, 24]
        assert all(float(r["pos_pairs"]) > 0 for r in log)
        evals = list(csv.DictReader((cell / "evals.csv").open()))
        assert {r["split"] for r in evals} == {"val"}, (
            "training never looks at the test set when selecting on val"
        )
        env = json.loads((cell / "env.json").read_text())
        assert env["device"] == "cpu" and env["packages"]["torch"]
    table = list(csv.DictReader((results / "tiny" / "cells.csv").open()))
    assert {r["loss"] for r in table} == {"ms", "binomial"}
    assert {r["weights"] for r in table} == {"final", "selected"}
    assert {r["loss_label"] for r in table} == {"MS", "Binomial"}


def test_same_seed_gives_the_same_metrics_and_reruns_skip(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment({"grid.losses": ["ms"]})
    first, second = tmp_path / "a", tmp_path / "b"
    assert run.main([str(exp), "--results", str(first), "--quiet", "--no-report"]) == 0
    assert run.main([str(exp), "--results", str(second), "--quiet", "--no-report"]) == 0
    (a,), (b,) = cells_of(first).values(), cells_of(second).values()
    assert final_metrics(a) == final_metrics(b)
    stamp = (a / "final.json").stat().st_mtime_ns
    out = run_cli(str(exp), "--results", str(first), "--quiet", "--no-report")
    assert out.returncode == 0, out.stderr
    assert "0 cells finished, 1 already finished (skipped)" in out.stderr
    assert (a / "final.json").stat().st_mtime_ns == stamp
    out = run_cli(str(exp), "--results", str(first), "--quiet", "--no-report", "--force")
    assert "1 cells finished, 0 already finished" in out.stderr


def test_non_finite_loss_fails_the_cell_and_the_grid_goes_on(
    tmp_path: Path,
    tiny_experiment: WriteExperiment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from harness.config import LossSpec

    real_build = LossSpec.build

    class NaNFromCall(torch.nn.Module):
        """The real loss, turned NaN from the 5th call on."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls, self.last_stats = inner, 0, {}

        def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            value = self.inner(emb, labels)
            self.last_stats = self.inner.last_stats
            return value * float("nan") if self.calls >= 5 else value

    def poisoned(spec: LossSpec) -> torch.nn.Module:
        loss = real_build(spec)
        return NaNFromCall(loss) if spec.name == "binomial" else loss

    monkeypatch.setattr(LossSpec, "build", poisoned)
    exp = tiny_experiment()
    results = tmp_path / "results"
    code = run.main(
        [str(exp), "--results", str(results), "--quiet", "--no-report", "--jobs", "1"]
    )  # patched here
    assert code == run.EXIT_FAILED_CELLS
    err = capsys.readouterr().err
    assert "1 failed" in err and "non-finite loss" in err
    finals = {
        name.split("-")[1]: json.loads((p / "final.json").read_text())
        for name, p in cells_of(results).items()
    }
    assert finals["ms"]["status"] == "finished"
    assert finals["binomial"]["status"] == "failed"
    assert "non-finite loss (nan) at iteration 5" in finals["binomial"]["reason"]
    table = list(csv.DictReader((results / "tiny" / "cells.csv").open()))
    assert [r["status"] for r in table if r["loss"] == "binomial"] == ["failed"]


def test_missing_dataset_is_one_line_and_exit_2(tmp_path: Path, tiny_experiment: WriteExperiment) -> None:
    exp = tiny_experiment({"grid.datasets": ["cub"], "model.backbone": "resnet50", "data.options": {}})
    out = run_cli(str(exp), "--results", str(tmp_path / "r"), "--set", f"data.root={tmp_path / 'nothing'}")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "CUB" in lines[-1], out.stderr
    assert "Traceback" not in out.stderr


def test_shards_share_one_experiment(tmp_path: Path, tiny_experiment: WriteExperiment) -> None:
    exp = tiny_experiment({"train.iterations": 8, "schedule.milestones": [4]})
    results = tmp_path / "results"
    first = run_cli(str(exp), "--results", str(results), "--shard", "0/2", "--quiet")
    assert first.returncode == 0, first.stderr
    assert len(cells_of(results)) == 1
    assert "report not written: 1 cells not finished yet" in first.stderr
    second = run_cli(str(exp), "--results", str(results), "--shard", "1/2", "--quiet")
    assert second.returncode == 0, second.stderr
    assert len(cells_of(results)) == 2
    assert (results / "tiny" / "report.md").is_file()


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_loses_at_most_the_last_checkpoint_and_resume_is_exact(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    from harness.results import CellPaths

    exp = tiny_experiment(
        {
            "grid.losses": ["binomial", "ms"],
            "train.iterations": 32,
            "train.eval_every": 8,
            "train.checkpoint_every": 2,
        }
    )
    reference = tmp_path / "reference"
    assert run.main([str(exp), "--results", str(reference), "--quiet", "--no-report", "--jobs", "1"]) == 0

    results = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.run",
            str(exp),
            "--results",
            str(results),
            "--quiet",
            "--no-report",
            "--jobs",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_THREAD,
    )
    cells = results / "tiny" / "cells"

    def finished_and_mid_training() -> tuple[list[Path], list[Path]]:
        folders = [p for p in cells.iterdir() if p.is_dir()]
        finished = [p for p in folders if (p / "final.json").exists()]
        return finished, [p for p in folders if (p / "checkpoint.pt").exists() and p not in finished]

    try:
        # kill -9 once the first cell has its final.json and the second is mid-training with a
        # checkpoint. The run is stopped (SIGSTOP, waited for) before the files are read, so the state
        # read is the state killed; the first cell may be anywhere after its final.json (status.json
        # and checkpoint not yet updated included).
        assert _wait_for(cells, 120)
        deadline = time.time() + 180
        while True:
            assert time.time() < deadline, "the run never reached a finished cell plus a checkpointed one"
            if all(finished_and_mid_training()):
                os.kill(proc.pid, signal.SIGSTOP)
                os.waitpid(proc.pid, os.WUNTRACED)
                done, mid_training = finished_and_mid_training()
                if done and mid_training:
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    (finished,), (interrupted,) = done, mid_training
    finished_before = (finished / "final.json").read_bytes()
    leftovers = [p for p in cells.rglob("*") if p.name.endswith(".tmp")]
    for p in leftovers:  # a temp file may be left by the kill, never a half-written result
        assert p.name.startswith(".")
    out = run_cli(str(exp), "--results", str(results), "--quiet", "--no-report", "--jobs", "1")
    assert out.returncode == 0, out.stderr
    assert "1 cells finished, 1 already finished (skipped)" in out.stderr
    assert not [p for p in cells.rglob("*") if p.name.endswith(".tmp")], (
        "the re-run cleans what the kill left"
    )
    assert (finished / "final.json").read_bytes() == finished_before
    assert CellPaths(finished).status_value() == "finished"  # final.json decides, whatever status.json says
    assert json.loads((interrupted / "status.json").read_text())["status"] == "finished"
    assert json.loads((interrupted / "final.json").read_text())["status"] == "finished"
    for name, path in cells_of(results).items():
        assert final_metrics(path) == final_metrics(reference / "tiny" / "cells" / name), name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_training_matches_one_process(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment(
        {
            "grid.losses": ["ms"],
            "train.iterations": 6,
            "train.eval_every": 6,
            "schedule.milestones": [3],
            "train.log_every": 1,
            "model.freeze_bn": True,  # BN statistics of a half batch would differ per rank
            "data.options.train_shift": 0,  # random shifts too
        }
    )
    single = tmp_path / "single"
    assert run.main([str(exp), "--results", str(single), "--quiet", "--no-report"]) == 0
    double = tmp_path / "double"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "-m",
            "harness.run",
            str(exp),
            "--results",
            str(double),
            "--quiet",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ONE_THREAD,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (one,), (two,) = cells_of(single).values(), cells_of(double).values()
    assert json.loads((two / "final.json").read_text())["world_size"] == 2
    losses_one = [float(r["loss"]) for r in csv.DictReader((one / "train_log.csv").open())]
    losses_two = [float(r["loss"]) for r in csv.DictReader((two / "train_log.csv").open())]
    pairs_one = [float(r["pos_pairs"]) for r in csv.DictReader((one / "train_log.csv").open())]
    pairs_two = [float(r["pos_pairs"]) for r in csv.DictReader((two / "train_log.csv").open())]
    assert len(losses_two) == 6
    assert pairs_one[0] == pairs_two[0], "both see the same full batch"
    assert losses_two == pytest.approx(losses_one, rel=1e-4, abs=1e-5)
    assert final_metrics(two)["final"]["test"]["recall@1"] == pytest.approx(
        final_metrics(one)["final"]["test"]["recall@1"], abs=0.02
    )
