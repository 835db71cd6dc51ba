"""harness.tune in one process with a stand-in trainer: totals, re-runs, failures, pruning, stale trials,
outputs."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import WriteExperiment
from figure_checks import record_figures
from optuna.trial import TrialState

from harness import builders, train
from harness.config import load_experiment
from harness.files import atomic_write_json
from harness.results import CellPaths
from harness.train import CellOutcome
from harness.tune import (
    HeartbeatConfig,
    Interrupted,
    Objective,
    SurplusTrial,
    counted_trials,
    load_tune,
    main,
    open_storage,
    open_study,
    study_counts,
    worker_seed,
)
from harness.tune import outputs as tune_outputs

ITERATIONS, EVAL_EVERY = 40, 10
WRITE_FIGURES = tune_outputs.write_figures


@pytest.fixture()
def tune_file(tiny_tune_file: WriteExperiment) -> WriteExperiment:
    """``tune_file(**study)``: the tiny tune file on the stand-in trainer's protocol
    (it never reads the data)."""

    def write(**study: Any) -> Path:
        return tiny_tune_file({"train.iterations": ITERATIONS, "train.eval_every": EVAL_EVERY}, **study)

    return write


class FakeTrainer:
    """Stands in for ``harness.train.train_cell``: a learning curve from the hyperparameters, no data."""

    def __init__(self, fail_folders: tuple[str, ...] = ()) -> None:
        self.fail_folders = fail_folders
        self.interrupt_folders: set[str] = set()  # the first training in these folders gets Ctrl-C
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @staticmethod
    def curve(hparams: dict[str, Any], iteration: int) -> float:
        peak = 1.0 - abs(math.log(float(hparams["alpha"]) / 2.0)) / 3.0 - 0.2 * float(hparams["lam"])
        return max(0.0, peak) * iteration / ITERATIONS

    def __call__(
        self,
        cfg: Any,
        paths: CellPaths,
        *,
        on_eval: Any = None,
        evaluate_test: bool = True,
        progress: bool = True,
        ctx: Any = None,
    ) -> CellOutcome:
        assert evaluate_test is False, "a study must never evaluate the test set"
        self.calls.append((paths.root.name, dict(cfg.loss.hparams)))
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(paths.checkpoint, {"iteration": 0})
        if paths.root.name in self.interrupt_folders:
            self.interrupt_folders.discard(paths.root.name)
            atomic_write_json(paths.status, {"status": "running"})
            raise Interrupted(signal.SIGINT)
        if paths.root.name in self.fail_folders:
            reason = "non-finite loss (nan) at iteration 3"
            atomic_write_json(paths.final, {"status": "failed", "reason": reason})
            return CellOutcome(cfg.cell_id, "failed", reason)
        best = 0.0
        for iteration in range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY):
            value = self.curve(cfg.loss.hparams, iteration)
            best = max(best, value)
            if on_eval is not None:
                on_eval(iteration, {"recall@1": value, "recall@2": min(1.0, 2 * value)})
        paths.checkpoint.unlink()
        metrics = {"selected": {"val": {"recall@1": best}}, "final": {"val": {"recall@1": value}}}
        return CellOutcome(cfg.cell_id, "finished", None, metrics)


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    trainer = FakeTrainer()
    monkeypatch.setattr(train, "train_cell", trainer)
    monkeypatch.setattr(builders, "load_splits", lambda cfg: None)
    monkeypatch.setattr(
        tune_outputs, "write_figures", lambda *args, **kwargs: []
    )  # slow; one test draws them
    return trainer


def trials_of(results: Path, storage: str | None = None, name: str = "tiny") -> list[Any]:
    url = storage or f"sqlite:///{results / name / 'study.db'}"
    storage_obj = open_storage(url, HeartbeatConfig())
    return optuna.load_study(study_name=name, storage=storage_obj).get_trials(deepcopy=False)


def run(path: Path, results: Path, *extra: str) -> int:
    return main([str(path), "--results", str(results), "--quiet", *extra])


def test_failed_trial_is_recorded_and_the_study_goes_on_then_outputs_are_written(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune_outputs, "write_figures", WRITE_FIGURES)
    drawn = record_figures(monkeypatch)
    fake.fail_folders = ("1",)
    results = tmp_path / "results"
    assert run(tune_file(best_set={"train.iterations": 4 * ITERATIONS}), results) == 0

    trials = trials_of(results)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    failed = trials[1]
    assert failed.state == TrialState.FAIL and failed.value is None
    assert "non-finite" in failed.user_attrs["fail_reason"]
    assert all(t.user_attrs["folder"] == f"trials/{t.number}" for t in trials)
    assert all(t.user_attrs["cell_id"].startswith("glyphs-ms-paper-d16-s0-") for t in trials)
    assert sorted(folder for folder, _ in fake.calls) == ["0", "1", "2", "3"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in complete:  # every evaluation reported, step = iteration
        assert sorted(t.intermediate_values) == list(range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY))
        assert t.value == pytest.approx(FakeTrainer.curve(t.params, ITERATIONS))

    study_dir = results / "tiny"
    best = max(complete, key=lambda t: t.value)
    experiment = load_experiment(study_dir / "best.yaml")
    assert experiment.name == "tiny-best"
    assert experiment.grid.seeds == [0, 1, 2]
    assert experiment.train.select_on == "val"
    assert experiment.grid.datasets == ["glyphs"] and experiment.grid.embedding_sizes == [16]
    loss = experiment.grid.losses[0]
    assert (loss.name, loss.preset) == ("ms", "paper")
    assert loss.hparams == pytest.approx(best.params)
    assert experiment.train.iterations == 4 * ITERATIONS  # study.best_set: the full protocol for the re-run

    summary = (study_dir / "summary.md").read_text()
    assert "PedAnovaImportanceEvaluator(target_quantile=0.1" in summary
    assert "3 complete, 0 pruned, 1 failed" in summary
    # the storage file by its path from the study folder: no machine's absolute path in a committed summary
    storage = next(line for line in summary.splitlines() if line.startswith("- Tune file:"))
    assert storage.endswith("storage: `sqlite:///study.db`"), storage  # the file in this folder
    # the wall time comes from the stored trials, so a summary rebuilt from the storage says the same
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    assert f"- Wall time, first trial's start to last trial's end: {span.total_seconds():.0f} s;" in summary
    assert f"trial {best.number}, val recall@1 = {best.value:.4f}" in summary
    assert "| alpha |" in summary and "| lam |" in summary
    for name in ("importance", "history", "slice", "intermediate", "timeline"):
        png = study_dir / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, f"{name}.png looks empty"
        assert f"](figures/{name}.png)" in summary
    # every figure in percent, like the intermediate values; importances from 3 trials carry the caveat
    caveat = "computed from only 3 complete trials (fewer than 20): a rough guide"
    assert f"**Caveat**: {caveat}" in summary and "| importance (% of the total) |" in summary
    for name in ("history", "slice", "intermediate"):
        axes = [ax for ax in drawn[name].axes if ax.get_label() != "<colorbar>"]
        assert axes[0].get_ylabel().endswith("(%)"), name
        drawn[name].canvas.draw()
        ticks = [float(t.get_text()) for t in axes[0].get_yticklabels() if t.get_text()]
        assert ticks and max(ticks) > 1.0, f"{name}: the objective is drawn as a fraction"
    importance = drawn["importance"].axes[0]
    assert caveat in importance.get_title(loc="left") and importance.get_xlabel().endswith("(%)")
    assert {t.get_text() for t in importance.texts} <= {str(v) for v in range(101)} | {"<1"}
    assert load_tune(study_dir / "tune.yaml").name == "tiny"


def test_trials_is_the_total_a_rerun_continues_to_and_never_passes(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment
) -> None:
    path, results = tune_file(), tmp_path / "results"
    journal = f"journal:{tmp_path / 'study.journal'}"
    assert run(path, results, "--storage", journal, "--trials", "2") == 0
    assert len(trials_of(results, journal)) == 2
    assert run(path, results, "--storage", journal, "--trials", "3") == 0
    assert run(path, results, "--storage", journal, "--trials", "3") == 0  # already full: nothing runs
    trials = trials_of(results, journal)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len(fake.calls) == 3
    assert len({tuple(sorted(h.items())) for _, h in fake.calls}) == 3, "reruns must not repeat startup draws"
    assert not (results / "tiny" / "study.db").exists(), "--storage replaces the default SQLite file"


def test_successive_halving_prunes_and_marks_the_trial_folder(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment
) -> None:
    pruner = {
        "name": "successive_halving",
        "min_resource": EVAL_EVERY,
        "reduction_factor": 2,
        "min_early_stopping_rate": 0,
    }
    results = tmp_path / "results"
    assert run(tune_file(pruner=pruner, trials=6), results) == 0
    trials = trials_of(results)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "successive halving should stop some of 6 trials"
    assert len(trials) == 6
    for t in pruned:
        assert max(t.intermediate_values) < ITERATIONS
        status = json.loads((results / "tiny" / "trials" / str(t.number) / "status.json").read_text())
        assert status["status"] == "pruned"
        assert not (results / "tiny" / "trials" / str(t.number) / "checkpoint.pt").exists()
    assert f"{len(pruned)} pruned" in (results / "tiny" / "summary.md").read_text()


def test_a_trial_beyond_the_total_is_marked_surplus_and_not_counted(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment
) -> None:
    setup = load_tune(tune_file())
    study = optuna.create_study(direction="maximize")
    for value in (0.1, 0.2):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, params={"alpha": 1.0, "lam": 0.5}, distributions=study_distributions()
            )
        )
    objective = Objective(setup, tmp_path / "study", total=2, progress=False)
    study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
    last = study.trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["surplus"] is True
    assert objective.surplus and not fake.calls
    assert len(counted_trials(study.trials)) == 2


def study_distributions() -> dict[str, Any]:
    from optuna.distributions import FloatDistribution

    return {"alpha": FloatDistribution(0.5, 10.0, log=True), "lam": FloatDistribution(0.0, 1.0)}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_stale_trial_is_failed_retried_in_its_own_folder_and_not_counted(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment
) -> None:
    path, results = (
        tune_file(heartbeat={"interval": 1, "grace_period": 2, "max_retry": 1}),
        tmp_path / "results",
    )
    setup = load_tune(path)
    url = f"sqlite:///{tmp_path / 'stale.db'}"
    storage = open_storage(url, setup.study.heartbeat)
    study = open_study(setup, storage, sampler_seed=0)
    crashed = study.ask()  # a worker that started a trial and died
    params = {
        "alpha": crashed.suggest_float("alpha", 0.5, 10.0, log=True),
        "lam": crashed.suggest_float("lam", 0.0, 1.0),
    }
    crashed.report(0.05, EVAL_EVERY)
    storage.record_heartbeat(crashed._trial_id)
    time.sleep(3.1)  # SQLite keeps whole seconds: 3.1 s is surely more than the 2 s grace period

    assert run(path, results, "--storage", url, "--trials", "2") == 0
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == pytest.approx(params)
    assert retry.user_attrs["folder"] == "trials/0", "the retry resumes the stale trial's folder"
    assert [t.number for t in counted_trials(trials)] == [1, 2]
    assert study_counts(optuna.load_study(study_name="tiny", storage=storage)) == {"complete": 2, "total": 2}
    assert [folder for folder, _ in fake.calls] == ["0", "2"]


def test_a_changed_tune_file_does_not_continue_an_old_study(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment
) -> None:
    path, results = tune_file(), tmp_path / "results"
    assert run(path, results, "--trials", "1") == 0
    from harness.errors import UserError

    with pytest.raises(UserError, match=r"made with other settings \(space\.lam\.high\).*--set study\.name"):
        run(path, results, "--trials", "2", "--set", "study.space.lam.high=0.5")


def test_worker_seeds_differ_between_workers_runs_and_hosts() -> None:
    seeds = {
        worker_seed(0, worker, before, host) for worker in range(4) for before in (0, 5) for host in "ab"
    }
    assert len(seeds) == 16
    assert worker_seed(0, 1, 5, "a") == worker_seed(0, 1, 5, "a")


def test_an_interrupted_trial_fails_is_not_counted_and_the_next_run_retries_it_in_its_folder(
    tmp_path: Path, fake: FakeTrainer, tune_file: WriteExperiment, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.interrupt_folders = {"1"}
    path, results = tune_file(), tmp_path / "results"
    assert run(path, results, "--trials", "3") == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "interrupted by SIGINT: 1 running trial(s) recorded as failed"
    )
    trials = trials_of(results)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["interrupted"] == "SIGINT" and counted_trials(trials) == trials[:1]
    folder = results / "tiny" / "trials" / "1"
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "interrupted by SIGINT" in status["reason"]
    assert (folder / "checkpoint.pt").is_file(), "the retry resumes from it"
    assert (results / "tiny" / "best.yaml").is_file()
    assert "1 interrupted, not counted" in (results / "tiny" / "summary.md").read_text()

    assert run(path, results, "--trials", "3") == 0
    trials = trials_of(results)
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == trials[1].params
    assert retry.user_attrs["folder"] == "trials/1"
    assert [t.number for t in counted_trials(trials)] == [0, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in counted_trials(trials))
    assert [name for name, _ in fake.calls] == ["0", "1", "1", "3"]
