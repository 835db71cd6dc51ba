"""Live logging of each cell: TensorBoard event files read back with TensorBoard's reader, MLflow on a real
server."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import WriteExperiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from harness import run
from harness.config import CellConfig, expand_cells, load_experiment
from harness.errors import UserError
from harness.records import CellStatus
from harness.results import cell_paths
from harness.tracking import Loggers, run_hparams, run_label
from harness.tracking.mlflow_logger import metric_key
from harness.tracking.tensorboard_logger import TENSORBOARD_DIR, event_files
from harness.train import train_cell

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference" / "glyphs-ablation"
SHORT = {"train.iterations": 8, "train.eval_every": 4, "train.log_every": 2, "schedule.milestones": [6]}


def read_events(folder: Path) -> EventAccumulator:
    """Every event of a run folder, as TensorBoard's own reader loads it (0: keep all)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def expected_scalars(cell: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` the cell's logs say its run must hold: train_log.csv, evals.csv,
    final.json."""
    expected: dict[str, dict[int, float]] = {}
    for row in csv.DictReader((cell / "train_log.csv").open()):
        for column, value in row.items():
            if column != "iteration":
                expected.setdefault(f"train/{column}", {})[int(row["iteration"])] = float(value)
    for row in csv.DictReader((cell / "evals.csv").open()):
        expected.setdefault(f"{row['split']}/{row['metric']}", {})[int(row["iteration"])] = float(
            row["value"]
        )
    final = json.loads((cell / "final.json").read_text())
    for weights, splits in final["metrics"].items():
        for split, values in splits.items():
            for metric, value in values.items():
                expected[f"{weights}/{split}/{metric}"] = {final["iterations"]: value}
    return expected


def assert_series(logged: list[tuple[int, float]], expected: dict[int, float], tag: str) -> None:
    """Each expected step exactly once, in order, with its value (event files hold float32)."""
    assert [step for step, _ in logged] == sorted(expected), tag
    assert [value for _, value in logged] == pytest.approx(
        [expected[k] for k in sorted(expected)], rel=1e-6
    ), tag


def hparams_record(events: EventAccumulator) -> tuple[dict[str, Any], int]:
    """The hparams plugin's view of a run: its hyperparameters and its session-end status."""
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return values, end.status


def as_logged(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as the hparams plugin stores them (numbers as floats)."""
    return {
        k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in hparams.items()
    }


def only_cell(exp: Path) -> CellConfig:
    (cell,) = expand_cells(load_experiment(exp))
    return cell


def test_every_tag_hparams_and_status_reach_tensorboard(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment({"grid.losses": [{"name": "ms", "preset": "official"}]})
    cfg = only_cell(exp)
    assert run.main([str(exp), "--results", str(tmp_path / "results"), "--quiet", "--no-report"]) == 0
    cell = cell_paths(tmp_path / "results" / "tiny", cfg.cell_id).root
    events = read_events(cell / TENSORBOARD_DIR)
    expected = expected_scalars(cell)
    assert set(events.Tags()["scalars"]) == set(expected)
    assert {"train/loss", "train/lr", "train/pos_pairs", "train/neg_pairs", "train/images_per_s"} <= set(
        expected
    )
    assert {"train/pos_weight_mean", "train/neg_weight_mean", "val/recall@1", "final/test/recall@1"} <= set(
        expected
    )
    assert {"selected/test/map_at_r", "final/val/recall@4"} <= set(expected)
    for tag, values in expected.items():
        assert_series([(event.step, event.value) for event in events.Scalars(tag)], values, tag)
    assert steps(events, "train/loss") == [4, 8, 12, 16, 20, 24]
    assert steps(events, "val/recall@1") == [8, 16, 24]
    hparams, status = hparams_record(events)
    assert hparams == as_logged(run_hparams(cfg))
    assert hparams["label"] == run_label(cfg) == "MS [official], glyphs d16, seed 0"
    assert hparams["loss.beta"] == 40.0 and hparams["loss.preset"] == "official"  # resolved from the preset
    assert hparams["train.deterministic"] is True and hparams["schedule.milestones"] == "[20]"
    assert "tracking.loggers" not in hparams and "data.cache_dir" not in hparams  # not what it trains
    assert status == api_pb2.STATUS_SUCCESS
    (text,) = events.Tensors("cell/text_summary")
    assert text.tensor_proto.string_val == [f"{run_label(cfg)} (cell {cfg.cell_id})".encode()]


def test_logging_off_writes_no_event_files_and_no_setting_changes_a_cell_id(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    exp = tiny_experiment({"grid.losses": ["ms"], "tracking.loggers": [], **SHORT})
    assert run.main([str(exp), "--results", str(tmp_path / "results"), "--quiet", "--no-report"]) == 0
    cells = tmp_path / "results" / "tiny" / "cells"
    assert [p.name for p in cells.iterdir()] == [only_cell(exp).cell_id]
    assert not list(cells.rglob(TENSORBOARD_DIR)) and not list(cells.rglob("events.out.tfevents.*"))
    assert not (tmp_path / "results" / "tiny" / "mlruns").exists()

    reference = json.loads((REFERENCE / "grid.json").read_text())["cell_ids"]
    for sets in (
        [],
        ["tracking.loggers=[]"],
        ["tracking.loggers=[tensorboard, mlflow]", "tracking.mlflow_uri=http://127.0.0.1:5000"],
    ):
        cells_now = expand_cells(load_experiment(ROOT / "experiments" / "glyphs-ablation.yaml", sets))
        assert [c.cell_id for c in cells_now] == reference, sets


def test_an_unknown_logger_is_one_line_with_the_close_match(tiny_experiment: WriteExperiment) -> None:
    with pytest.raises(UserError, match=r"tracking\.loggers.*unknown logger 'tensorbord'.*'tensorboard'"):
        load_experiment(tiny_experiment({"tracking.loggers": ["tensorbord"]}))


def test_a_missing_mlflow_is_one_line_and_exit_2_at_check(
    tiny_experiment: WriteExperiment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    exp = tiny_experiment({"tracking.loggers": ["tensorboard", "mlflow"]})
    assert run.main([str(exp), "--check"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "error: tiny: tracking.loggers: 'mlflow' needs the mlflow package, which is not installed; "
        "install it "
        "(pip install 'gpw-harness[mlflow]') or remove 'mlflow' from tracking.loggers"
    )
    with pytest.raises(UserError, match="needs the mlflow package"):  # and before a run trains anything
        run.main([str(exp), "--results", str(exp.parent / "results"), "--quiet"])
    assert not (exp.parent / "results" / "tiny" / "cells").exists()


class Stopped(Exception):
    """Stands for whatever ends a training early (Ctrl-C, a pruned trial, a killed worker)."""


def stop_at(iteration: int) -> Any:
    def on_eval(at: int, values: dict[str, float]) -> None:
        if at == iteration:
            raise Stopped

    return on_eval


def test_a_resumed_cell_continues_its_run_without_logging_a_step_twice(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    cfg = only_cell(tiny_experiment({"grid.losses": ["ms"]}))
    paths = cell_paths(tmp_path / "results" / "tiny", cfg.cell_id)
    with pytest.raises(Stopped):  # stops at 16 after logging 12 and 16; the checkpoint is at 8
        train_cell(cfg, paths, progress=False, on_eval=stop_at(16))
    folder = paths.root / TENSORBOARD_DIR
    (first,) = event_files(folder)
    assert steps(read_events(folder), "train/loss") == [4, 8, 12, 16]
    assert torch.load(paths.checkpoint, weights_only=False)["iteration"] == 8
    train_cell(cfg, paths, progress=False)  # resumes at 9
    assert event_files(folder)[0] == first and len(event_files(folder)) == 2
    events = read_events(folder)
    expected = expected_scalars(paths.root)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, values in expected.items():
        assert_series([(event.step, event.value) for event in events.Scalars(tag)], values, tag)
    hparams, status = hparams_record(events)
    assert hparams == as_logged(run_hparams(cfg)) and status == api_pb2.STATUS_SUCCESS

    train_cell(cfg, paths, progress=False)  # trained again from scratch (as --force does): a new run
    assert len(event_files(folder)) == 1 and event_files(folder)[0] != first
    assert steps(read_events(folder), "train/loss") == [4, 8, 12, 16, 20, 24]


def test_a_failing_logger_is_dropped_with_a_warning_and_training_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        def start(self, run_name: str, hparams: Any, first_step: int) -> None:
            self.calls.append(("start", first_step))

        def log_scalars(self, step: int, scalars: Any) -> None:
            self.calls.append(("scalars", dict(scalars)))

        def close(self, status: CellStatus | None) -> None:
            self.calls.append(("close", status))

    class ServerGone(Recorder):
        def log_scalars(self, step: int, scalars: Any) -> None:
            raise ConnectionError("the tracking server went away\n(connection refused)")

    good, bad = Recorder(), ServerGone()
    loggers = Loggers([bad, good])
    loggers.start("run", {}, 1)
    loggers.log_scalars(4, {"train/loss": 1.0})
    loggers.log_metrics(8, {"final": {"test": {"recall@1": 0.5}}})
    loggers.close(CellStatus.FINISHED)
    assert good.calls == [
        ("start", 1),
        ("scalars", {"train/loss": 1.0}),
        ("scalars", {"final/test/recall@1": 0.5}),
        ("close", CellStatus.FINISHED),
    ]
    assert bad.calls == [("start", 1)]
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "warning: test_tracking: live logging stopped for this cell: "
        "the tracking server went away (connection refused)"
    )


# ------------------------------------------------------------------------------------------------ MLflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on loopback (SQLite store), its URI; stopped at the end."""
    pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install 'gpw-harness[mlflow]'")
    folder = tmp_path_factory.mktemp("mlflow-server")
    uri = f"http://127.0.0.1:{_free_port()}"
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            uri.rsplit(":", 1)[1],
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # its workers share its process group: stopped together
    )
    try:
        deadline = time.monotonic() + 240  # a bound on the wait, not a timing assertion
        while True:
            assert server.poll() is None, f"the MLflow server exited: {(folder / 'server.log').read_text()}"
            assert time.monotonic() < deadline, f"no answer from {uri}: {(folder / 'server.log').read_text()}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_mlflow_holds_one_run_per_cell_with_params_and_metrics_also_from_workers(
    tmp_path: Path, tiny_experiment: WriteExperiment, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the spawned workers inherit it
    exp = tiny_experiment({"tracking.loggers": ["tensorboard", "mlflow"]})
    results = tmp_path / "results"
    assert run.main([str(exp), "--results", str(results), "--quiet", "--no-report", "--jobs", "2"]) == 0
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = {r.data.tags["cell_id"]: r for r in client.search_runs([experiment.experiment_id])}
    cells = expand_cells(load_experiment(exp))
    assert sorted(runs) == sorted(c.cell_id for c in cells)
    for cfg in cells:
        found, cell = runs[cfg.cell_id], cell_paths(results / "tiny", cfg.cell_id).root
        assert found.info.run_name == run_label(cfg) and found.info.status == "FINISHED"
        assert found.data.params == {k: str(v) for k, v in run_hparams(cfg).items()}
        expected = expected_scalars(cell)
        assert set(found.data.metrics) == {metric_key(tag) for tag in expected}
        for tag, values in expected.items():
            history = client.get_metric_history(found.info.run_id, metric_key(tag))
            assert_series(sorted((m.step, m.value) for m in history), values, tag)
        assert event_files(cell / TENSORBOARD_DIR), "the workers log to TensorBoard too"

    # the local store (no URI anywhere): a resumed cell continues its run, each step once
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cfg = only_cell(tiny_experiment({"grid.losses": ["ms"], "tracking.loggers": ["mlflow"]}, name="resumed"))
    exp_dir = tmp_path / "local" / "resumed"
    paths = cell_paths(exp_dir, cfg.cell_id)
    with pytest.raises(Stopped):
        train_cell(cfg, paths, progress=False, on_eval=stop_at(16))
    train_cell(cfg, paths, progress=False)
    local = MlflowClient(tracking_uri=f"sqlite:///{exp_dir / 'mlruns' / 'mlflow.db'}")
    experiment = local.get_experiment_by_name("resumed")
    assert experiment is not None and client.get_experiment_by_name("resumed") is None
    (resumed,) = local.search_runs([experiment.experiment_id])
    assert resumed.info.status == "FINISHED" and resumed.data.tags["cell_id"] == cfg.cell_id
    for tag, values in expected_scalars(paths.root).items():
        history = sorted(
            (m.step, m.value) for m in local.get_metric_history(resumed.info.run_id, metric_key(tag))
        )
        if (
            tag == "train/images_per_s"
        ):  # a measured speed: steps 12 and 16 keep what the first attempt measured
            assert [step for step, _ in history] == sorted(values)
        else:  # the resumed training repeats the first attempt's numbers exactly
            assert_series(history, values, tag)


def test_the_mlflow_uri_comes_from_the_config_then_the_environment_then_the_local_store(
    tmp_path: Path, tiny_experiment: WriteExperiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.tracking.mlflow_logger import Logger

    paths = cell_paths(tmp_path / "results" / "tiny", "a-cell")
    configured = only_cell(
        tiny_experiment({"grid.losses": ["ms"], "tracking.mlflow_uri": "http://127.0.0.1:1"})
    )
    plain = only_cell(tiny_experiment({"grid.losses": ["ms"]}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:2")
    assert Logger(configured, paths).uri == "http://127.0.0.1:1"
    assert Logger(plain, paths).uri == "http://127.0.0.1:2"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert (
        Logger(plain, paths).uri is None
        and Logger(plain, paths).store == tmp_path / "results" / "tiny" / "mlruns"
    )
    assert metric_key("val/recall@1") == "val/recall_at_1" and metric_key("a#b c:d") == "a_b c:d"
