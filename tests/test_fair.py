"""harness.fair and the declared search spaces: every loss's space, the fair file, equal budgets, resume,
report."""

from __future__ import annotations

import inspect
import json
import math
import signal
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import WriteExperiment

import losses
from harness import train
from harness.errors import UserError
from harness.fair import load_fair, main, tuned_vs_default, worker_order
from harness.fair.studies import study_dir, study_state
from harness.files import atomic_write_json
from harness.records import CellStatus, FinalRecord, write_record
from harness.results import CellPaths
from harness.stats import holm, paired_test
from harness.stopping import Interrupted
from harness.train import CellOutcome
from harness.tune import counted_trials, load_tune
from harness.tune import outputs as tune_outputs
from harness.tune.schema import PrunerConfig, declared_space
from losses.zoo import PRESETS

FAIR = {
    "trials": 2,
    "seeds": [0],
    "trial_set": {
        "train.iterations": 4,
        "train.eval_every": 2,
        "train.log_every": 2,
        "schedule.milestones": [2],
    },
    "sampler": {"name": "tpe", "multivariate": True, "constant_liar": True, "n_startup_trials": 2, "seed": 0},
    "pruner": {"name": "none"},
}
# The re-runs: 4 iterations, R@1 only, seeds 0 and 1 (the grid), so both runs take seconds; the trials train
# the same protocol (FAIR's trial_set changes nothing but the log interval).
RERUN = {
    "grid.seeds": [0, 1],
    "train.iterations": 4,
    "train.eval_every": 2,
    "schedule.milestones": [2],
    "evaluate.metrics": ["recall"],
    "evaluate.ks": [1],
}


@pytest.fixture()
def fair_file(tiny_experiment: WriteExperiment) -> Any:
    """``fair_file(overrides, **fair)``: the tiny two-loss experiment (MS, Binomial) as a fair file."""

    def write(overrides: dict[str, Any] | None = None, **fair: Any) -> Path:
        return tiny_experiment({**RERUN, "fair": {**FAIR, **fair}, **(overrides or {})}, name="tinyfair")

    return write


@pytest.fixture(autouse=True)
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Optuna figures (test_tune.py checks them): the orchestration is what is tested here."""
    monkeypatch.setattr(tune_outputs, "write_figures", lambda *args, **kwargs: [])


# ------------------------------------------------------------------------------ declared search spaces


@pytest.mark.parametrize("name", losses.available())
def test_every_loss_declares_a_valid_space_around_its_defaults(name: str) -> None:
    entry = losses.info(name)
    assert entry.search_space, f"{name} declares no search space"
    keywords = inspect.signature(entry.factory).parameters
    for param in entry.search_space:
        assert param.name in keywords and param.name != "preset"
        assert param.low < param.high and (not param.log or param.low > 0)
        assert param.source, f"{name}.{param.name} names no source for its range"
        for end in (param.low, param.high):
            losses.build(name, **{param.name: end})  # both ends build
    for preset in PRESETS:
        values = losses.build(name, preset=preset).hparams
        for param in entry.search_space:
            assert param.contains(values[param.name]), f"{name} {preset}: {param.name} {values[param.name]}"


def test_a_search_space_naming_no_keyword_is_refused_at_registration() -> None:
    def unregistered(*, lam: float | None = None) -> losses.GPWLoss:
        """A factory without a gamma."""
        return losses.build("triplet", lam=lam)

    decorate = losses.register_loss(
        label="x", equation="-", similarities="S", search_space=(losses.SearchParam("gamma", 0.1, 1.0),)
    )
    with pytest.raises(RuntimeError, match="search space names"):
        decorate(unregistered)
    assert "unregistered" not in losses.available()
    with pytest.raises(ValueError, match="log range"):
        losses.SearchParam("alpha", 0.0, 1.0, log=True)


def test_a_tune_file_without_a_space_searches_the_declared_one(tiny_tune_file: WriteExperiment) -> None:
    setup = load_tune(tiny_tune_file(space={}))
    assert setup.study.space == declared_space("ms")
    assert list(setup.study.space) == ["alpha", "beta", "lam", "eps"]


# ------------------------------------------------------------------------------ the fair file


def test_the_fair_file_gives_every_loss_the_same_study_on_the_trial_protocol(fair_file: Any) -> None:
    setup = load_fair(fair_file(spaces={"binomial": {"alpha": {"low": 1.0, "high": 3.0}}}))
    assert [s.key for s in setup.studies] == ["ms", "binomial"]
    for study in setup.studies:
        assert study.setup.study.trials == 2 and study.setup.study.pruner.name == "none"
        assert study.setup.template.train.iterations == 4 and study.setup.template.train.select_on == "val"
        assert study.setup.template.loss == study.spec
    assert setup.studies[0].setup.study.space == declared_space("ms")
    assert list(setup.studies[1].setup.study.space) == ["alpha"]
    assert setup.protocol_changes == [] and all(
        s.full is None for s in setup.studies
    )  # the re-runs' protocol
    assert setup.labels == {"ms": "MS", "binomial": "Binomial"}  # the paper's row labels


def test_a_shorter_trial_protocol_is_named_and_gets_a_full_protocol_setup_for_rescoring(
    fair_file: Any,
) -> None:
    short = {**FAIR["trial_set"], "train.iterations": 2, "schedule.milestones": [1]}
    setup = load_fair(fair_file(trial_set=short))
    assert setup.protocol_changes == [
        "schedule.milestones [1] (re-runs [2])",
        "train.iterations 2 (re-runs 4)",
    ]
    for study in setup.studies:
        assert study.setup.template.train.iterations == 2
        assert study.full is not None and study.full.template.train.iterations == 4
        assert study.full.template.schedule.milestones == [2] and study.full.study.pruner.name == "none"
        assert study.full.study.space == study.setup.study.space


@pytest.mark.parametrize(
    ("overrides", "fair", "message"),
    [
        ({"grid.datasets": ["glyphs", "cub"]}, {}, "one block"),
        ({"grid.seeds": [0]}, {}, "at least 2 seeds"),
        ({}, {"spaces": {"triplet": {"lam": {"low": 0.0, "high": 1.0}}}}, "name no loss of the grid"),
        ({}, {"trials": 0}, "fair.trials"),
        ({}, {"spaces": {"ms": {"gamma": {"low": 0.0, "high": 1.0}}}}, "no hyperparameter 'gamma'"),
        (
            {},
            {"pruner": {"name": "hyperband", "min_resource": 2, "max_resource": 2, "reduction_factor": 2}},
            r"fair.pruner.max_resource: 2, but a trial trains 4 iterations .* set it to 4",
        ),
        (
            {},
            {"pruner": {"name": "hyperband", "min_resource": 1, "max_resource": 4, "reduction_factor": 2}},
            r"fair.pruner.min_resource: 1 is not an evaluation point of the trials \(every 2 iterations\)",
        ),
    ],
)
def test_fair_file_mistakes_are_one_line(fair_file: Any, overrides: dict, fair: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        load_fair(fair_file(overrides, **fair))
    assert "\n" not in str(caught.value)


def test_workers_start_on_different_studies(fair_file: Any) -> None:
    studies = load_fair(fair_file()).studies
    assert [s.key for s in worker_order(studies, 0)] == ["ms", "binomial"]
    assert [s.key for s in worker_order(studies, 1)] == ["binomial", "ms"]


# ------------------------------------------------------------------------ studies with a stand-in trainer


class FakeTrainer:
    """Stands in for ``harness.train.train_cell`` in the studies: a curve from alpha, no data,
    test never seen."""

    def __init__(
        self,
        interrupt_call: int | None = None,
        fold_step: float = 0.0,
        default_worst: bool = False,
        short_optimum: float | None = None,
    ) -> None:
        self.interrupt_call = interrupt_call
        self.short_optimum = (
            short_optimum  # trained under 4 iterations, the value peaks at this alpha instead
        )
        self.default_worst = default_worst  # the value is lowest at alpha 2 (the default) instead of highest
        self.fold_step = fold_step  # added to the value per fold number (class folds give different values)
        self.calls: list[str] = []
        self.data: list[Any] = []  # the data settings of every cell trained

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
        self.calls.append(cfg.loss.name)
        self.data.append(cfg.data)
        if len(self.calls) == self.interrupt_call:
            raise Interrupted(signal.SIGINT)
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(paths.status, {"status": "running"})
        short = self.short_optimum is not None and cfg.train.iterations < 4
        optimum = self.short_optimum if short and self.short_optimum is not None else 2.0
        value = 1.0 / (1.0 + abs(math.log(float(cfg.loss.hparams["alpha"]) / optimum)))
        value = 1.0 - value if self.default_worst else value
        value += self.fold_step * cfg.data.val_fold
        for iteration in (2, 4) if on_eval is not None else ():
            on_eval(iteration, {"recall@1": value * iteration / 4})
        metrics = {"selected": {"val": {"recall@1": value}}}
        write_record(
            paths.final, FinalRecord(status=CellStatus.FINISHED, cell_id=cfg.cell_id, metrics=metrics)
        )
        return CellOutcome(cfg.cell_id, "finished", None, metrics)


def stored_trials(fair_path: Path, results: Path) -> dict[str, list[Any]]:
    setup = load_fair(fair_path)
    storage = f"sqlite:///{results / setup.name / 'studies.db'}"
    return {s.key: optuna.load_study(study_name=s.name, storage=storage).get_trials() for s in setup.studies}


def test_an_interrupted_fair_run_resumes_to_equal_trial_counts(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, results = fair_file(trials=3), tmp_path / "results"
    argv = [str(path), "--results", str(results), "--studies-only", "--quiet"]
    fake = FakeTrainer(interrupt_call=4)
    monkeypatch.setattr(train, "train_cell", fake)
    assert main(argv) == 128 + signal.SIGINT  # stopped in the 4th trial (the first of Binomial's)
    first = stored_trials(path, results)
    assert [len(counted_trials(t)) for t in first.values()] == [3, 0]
    resumed = FakeTrainer()
    monkeypatch.setattr(train, "train_cell", resumed)
    assert main(argv) == 0
    assert resumed.calls == ["binomial"] * 3  # MS was full: no new MS trial
    trials = stored_trials(path, results)
    for key, stored in trials.items():
        counted = counted_trials(stored)
        assert len(counted) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted), key
    again = FakeTrainer()
    monkeypatch.setattr(train, "train_cell", again)
    assert main(argv) == 0 and again.calls == []  # full studies: nothing more
    setup = load_fair(path)
    for study in setup.studies:
        assert (study_dir(results / setup.name, study) / "summary.md").is_file()


class AlwaysPrune(optuna.pruners.BasePruner):
    """The most aggressive pruner: every trial, at every step."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_the_first_trial_trains_the_defaults_and_no_pruner_stops_it(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, results = fair_file(trials=3), tmp_path / "results"
    monkeypatch.setattr(PrunerConfig, "build", lambda self: AlwaysPrune())
    monkeypatch.setattr(train, "train_cell", FakeTrainer(default_worst=True))
    assert main([str(path), "--results", str(results), "--studies-only", "--quiet"]) == 0
    setup = load_fair(path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{results / setup.name / 'studies.db'}")
    for study in setup.studies:
        defaults = study.spec.resolved()["hparams"]
        trials = sorted(stored_trials(path, results)[study.key], key=lambda t: t.number)
        first = trials[0]
        assert first.params == pytest.approx({name: defaults[name] for name in study.setup.study.space})
        assert first.params == pytest.approx(study.setup.default_params)
        assert first.state == optuna.trial.TrialState.COMPLETE and first.user_attrs["default"] is True
        assert [t.state for t in trials[1:]] == [optuna.trial.TrialState.PRUNED] * 2  # the others are pruned
        state = study_state(study, storage)
        assert state.best_value is not None and state.default_value == pytest.approx(first.value)
        assert state.best_value >= state.default_value and state.counts["total"] == 3  # counted in the budget
        costs = [t.user_attrs["cpu_seconds"] for t in trials]  # pruned trials record their cost too
        assert state.cpu_seconds == pytest.approx(sum(costs)) and state.default_cpu_seconds == costs[0]
    assert main([str(path), "--results", str(results), "--check"]) == 0
    assert "stored: 3 of 3" in capsys.readouterr().out


def test_the_best_trial_is_never_worse_than_the_defaults(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, results = fair_file(trials=3), tmp_path / "results"
    monkeypatch.setattr(train, "train_cell", FakeTrainer())  # the defaults (alpha 2) are the optimum
    assert main([str(path), "--results", str(results), "--studies-only", "--quiet"]) == 0
    setup = load_fair(path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{results / setup.name / 'studies.db'}")
    for study in setup.studies:
        state = study_state(study, storage)
        assert state.best_number == 0 and state.best_value == pytest.approx(1.0)
        assert state.best_params == pytest.approx(study.setup.default_params)


def test_a_range_excluding_a_default_is_one_line(fair_file: Any) -> None:
    narrow = {"ms": {"alpha": {"low": 3.0, "high": 5.0}}}
    with pytest.raises(
        UserError, match=r"fair\.spaces\.ms\.alpha: the range \[3, 5\] excludes .* alpha=2"
    ) as caught:
        load_fair(fair_file(spaces=narrow))
    assert "\n" not in str(caught.value)
    setup = load_fair(fair_file(spaces=narrow, default_first=False))  # no default trial: the range is free
    assert setup.studies[0].setup.first_params is None


def test_with_folds_a_trial_trains_every_class_fold_and_scores_their_mean(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, results = fair_file(trials=2, folds=3), tmp_path / "results"
    setup = load_fair(path)
    study = setup.studies[0].setup
    assert study.runs == [(0, 0), (0, 1), (0, 2)] and study.steps == 3 * study.template.train.iterations
    assert study.template.data.val_folds == 0  # the template (and best.yaml) keep the grid's split
    fake = FakeTrainer(fold_step=0.1)
    monkeypatch.setattr(train, "train_cell", fake)
    assert main([str(path), "--results", str(results), "--studies-only", "--quiet"]) == 0
    per_trial = [(3, fold, 1 / 3) for fold in (0, 1, 2)]  # val_folds, val_fold, val_fraction of each cell
    trained = [(d.val_folds, d.val_fold, d.val_fraction) for d in fake.data]
    assert trained == per_trial * 4  # 2 losses x 2 trials, each over the 3 folds
    for key, stored in stored_trials(path, results).items():
        for trial in stored:
            base = 1.0 / (1.0 + abs(math.log(trial.params["alpha"] / 2.0)))
            assert trial.value == pytest.approx(base + 0.1)  # the mean over folds of base + 0.1 * fold
            curve = [trial.intermediate_values[step] for step in (2, 4, 6, 8, 10, 12)]
            assert curve[-1] == pytest.approx(trial.value)  # the running mean over the folds trained so far
            assert curve[1] == pytest.approx(base) and curve[3] == pytest.approx(base + 0.05)
            folder = results / setup.name / "studies" / key / trial.user_attrs["folder"]
            assert sorted(p.name for p in folder.iterdir()) == ["f0", "f1", "f2"]
    other_folds = [str(path), "--results", str(results), "--studies-only", "--quiet", "--set", "fair.folds=2"]
    with pytest.raises(UserError, match=r"made with other settings \(folds\)"):
        main(other_folds)  # another fold count is another objective: the stored study is not continued


def test_fold_mistakes_in_fair_and_tune_files_are_one_line(fair_file: Any, tiny_tune_file: Any) -> None:
    for make, message in [
        (lambda: load_fair(fair_file(folds=1)), "1 fold would leave no training classes"),
        (
            lambda: load_tune(tiny_tune_file({"data.val_folds": 4}, folds=2)),
            "data.val_folds already fixes one fold",
        ),
    ]:
        with pytest.raises(UserError, match=message) as caught:
            make()
        assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------ the report's statistics


def test_tuned_vs_default_is_the_paired_t_test_with_holm_over_the_losses() -> None:
    rng = np.random.default_rng(0)
    default = pd.DataFrame(rng.normal(50, 2, size=(5, 2)), columns=["ms", "binomial"])
    tuned = default + pd.DataFrame(rng.normal([3, 0], 1, size=(5, 2)), columns=["ms", "binomial"])
    table = tuned_vs_default(default, tuned, ["ms", "binomial"]).set_index("key")
    p = [paired_test(tuned[k], default[k]).p_t for k in ("ms", "binomial")]
    assert table["p"].to_list() == pytest.approx(p)
    assert table["p_holm"].to_list() == pytest.approx(list(holm(p)))
    assert table.at["ms", "mean_diff"] == pytest.approx(float((tuned["ms"] - default["ms"]).mean()))
    assert table.at["ms", "decision"] == "tuned better"
    assert table.at["binomial", "decision"].startswith("no difference larger than")


# ------------------------------------------------------------------------ end to end, two worker processes


def test_two_workers_on_one_storage_fill_every_study_once(fair_file: Any, tmp_path: Path) -> None:
    path, results = fair_file(), tmp_path / "results"
    assert main([str(path), "--results", str(results), "--quiet", "--workers", "2", "--studies-only"]) == 0
    trials = stored_trials(path, results)
    for key, stored in trials.items():
        assert len(stored) == 2 and len(counted_trials(stored)) == 2, key  # each trial once, none surplus
        assert all(
            t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) for t in stored
        )
        assert len({t.user_attrs["folder"] for t in stored}) == 2


def test_a_real_fair_run_tunes_reruns_reports_and_resumes_without_new_work(
    fair_file: Any, tmp_path: Path
) -> None:
    path, results = fair_file(trials=1), tmp_path / "results"
    argv = [str(path), "--results", str(results), "--quiet", "--jobs", "1"]
    assert main(argv) == 0
    trials = stored_trials(path, results)
    fair_dir = results / "tinyfair"
    tuned = yaml.safe_load((fair_dir / "tuned.yaml").read_text())
    for entry, stored in zip(tuned["grid"]["losses"], trials.values(), strict=True):
        assert entry["hparams"] == pytest.approx(stored[0].params)  # the one (best) trial's values
    finals = {}
    for run in ("default", "tuned"):
        cells = pd.read_csv(fair_dir / run / "cells.csv")
        assert set(cells["status"]) == {"finished"} and cells["cell_id"].nunique() == 4
        finals[run] = {p: p.stat().st_mtime_ns for p in (fair_dir / run / "cells").glob("*/final.json")}
    report = (fair_dir / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0].startswith("## Default and tuned: validation (selection), then test")
    assert (
        headings[1:3] == ["## Budget and convergence", "## Tuned values"]
        and "How the ranking moves" in report
    )
    assert "1 / 1" in report and "default vs paper Table 2 (2 losses)" in report
    assert "| MS |" in report and "| Binomial |" in report and "| ms |" not in report  # the paper's labels
    assert "the trials train the re-runs' protocol (4 iterations" in report
    assert (fair_dir / "figures" / "convergence.png").is_file() and "figures/convergence.png" in report
    selection = json.loads((fair_dir / "selection.json").read_text())
    assert selection["ms"]["trial"] == 0 and selection["ms"]["value"] == pytest.approx(trials["ms"][0].value)
    assert selection["ms"]["default_value"] == selection["ms"]["value"]  # one trial: the defaults
    for stored in trials.values():
        assert stored[0].user_attrs["cpu_seconds"] > 0  # what the trial cost, for the budget

    assert main(argv) == 0  # a re-run: no new trial, no cell trained again
    assert {k: len(v) for k, v in stored_trials(path, results).items()} == {"ms": 1, "binomial": 1}
    for run, stamps in finals.items():
        assert {p: p.stat().st_mtime_ns for p in (fair_dir / run / "cells").glob("*/final.json")} == stamps


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parents[1].glob("experiments/fair*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_fair_file_loads(path: Path) -> None:
    setup = load_fair(path)
    assert setup.studies, "a fair file must declare at least one study"
    assert len({study.setup.study.trials for study in setup.studies}) == 1, (
        "every loss gets the same trial budget"
    )
    for study in setup.studies:
        assert study.setup.template.train.select_on == "val", "studies must never select on the test set"


# ------------------------------------------------------------------ selection, budget, --check, --defaults


def test_with_a_shorter_trial_protocol_the_candidates_are_rescored_on_the_full_one(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = {**FAIR["trial_set"], "train.iterations": 2, "schedule.milestones": [1]}
    path, results = fair_file(trials=4, rescore=2, trial_set=short), tmp_path / "results"
    # On the short protocol the value peaks at alpha 5; on the full one at alpha 2 (the defaults).
    fake = FakeTrainer(short_optimum=5.0)
    monkeypatch.setattr(train, "train_cell", fake)
    import harness.fair.cli as fair_cli

    monkeypatch.setattr(fair_cli, "rerun", lambda *args, **kwargs: 0)  # the test re-runs are tested elsewhere
    monkeypatch.setattr(fair_cli, "write_fair_report", lambda *args, **kwargs: tmp_path / "report.md")
    assert main([str(path), "--results", str(results), "--quiet"]) == 0
    selection = json.loads((results / "tinyfair" / "selection.json").read_text())
    setup = load_fair(path)
    for study in setup.studies:
        chosen = selection[study.key]
        assert chosen["rescored"][0]["number"] is None  # the defaults are always a candidate
        assert len(chosen["rescored"]) == 3  # and the best 2 other trials
        assert chosen["trial"] is None and chosen["params"] == {}  # the defaults win on the full protocol
        assert chosen["value"] == pytest.approx(1.0) == chosen["default_value"]
        folder = study_dir(results / "tinyfair", study) / "rescore"
        assert (folder / "default" / "rescore.json").is_file()
    calls = len(fake.calls)
    assert main([str(path), "--results", str(results), "--quiet"]) == 0
    assert len(fake.calls) == calls  # a second run reads the finished re-scores back


def test_convergence_is_the_gain_of_the_last_third(fair_file: Any) -> None:
    from harness.fair.studies import StudyState

    study = load_fair(fair_file(trials=6)).studies[0]
    history = ((0, 0.40), (1, None), (2, 0.45), (3, 0.44), (4, 0.47), (5, None))
    state = StudyState(study, {"total": 6}, 0.47, {}, 4, 0.40, history)
    assert state.best_so_far() == [0.40, 0.40, 0.45, 0.45, 0.47, 0.47]
    assert state.last_third_gain() == pytest.approx(0.02)  # best after trial 4 of 6: 0.45; at the end: 0.47
    from harness.fair.report import _convergence_words

    assert _convergence_words(state, 1.0).startswith("budget too small for this loss (+2.00 > 1.0)")
    assert _convergence_words(state, 2.5).startswith("converged")


def test_check_lists_studies_budget_and_reruns_and_trains_nothing(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeTrainer()
    monkeypatch.setattr(train, "train_cell", fake)
    path, results = fair_file(trials=3), tmp_path / "results"
    assert main([str(path), "--results", str(results), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: tinyfair: 2 studies x 3 trials = 6 trials, each up to 4 iterations")
    assert "trials: the re-runs' protocol (4 iterations)" in out
    assert "study tinyfair-ms (MS): alpha [0.5, 10] log" in out and "defaults alpha=2, beta=50" in out
    assert "default arm 4 cells in" in out and "(0 already finished, reused)" in out
    assert fake.calls == [] and not results.exists()  # nothing trained, nothing written
    with pytest.raises(UserError, match=r"fair\.spaces\.ms\.alpha: the range"):
        main(
            [
                str(path),
                "--check",
                "--set",
                "fair.spaces.ms.alpha.low=3.0",
                "--set",
                "fair.spaces.ms.alpha.high=4.0",
            ]
        )


def test_defaults_reuse_a_finished_run_of_the_same_grid(
    fair_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.fair.cli import finished_cells

    path, results = fair_file(trials=1), tmp_path / "results"
    main_job = tmp_path / "main"
    doc = yaml.safe_load(path.read_text())
    doc.pop("fair")
    doc["name"] = "mainjob"
    grid_file = tmp_path / "mainjob.yaml"
    grid_file.write_text(yaml.safe_dump(doc))
    from harness import run

    assert run.main([str(grid_file), "--results", str(main_job), "--quiet", "--jobs", "1"]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in (main_job / "mainjob" / "cells").glob("*/final.json")}
    assert len(stamps) == 4
    argv = [
        str(path),
        "--results",
        str(results),
        "--quiet",
        "--jobs",
        "1",
        "--defaults",
        str(main_job / "mainjob"),
    ]
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the main job's cells reused, not retrained
    assert finished_cells(results / "tinyfair" / "default.yaml", main_job / "mainjob") == (4, 4)
    assert "| MS |" in (results / "tinyfair" / "report.md").read_text()
    reference = tmp_path / "results" / "reference" / "mainjob"
    reference.mkdir(parents=True)
    with pytest.raises(
        UserError, match=r"--defaults .*reference.*: a committed reference run holds 0 of the 4"
    ):
        main([*argv[:-1], str(reference)])


def test_the_shipped_glyphs_file_tunes_on_the_main_jobs_protocol_and_reuses_its_cells() -> None:
    from harness.config import expand_cells, load_experiment, validate_experiment
    from harness.fair import default_experiment

    root = Path(__file__).resolve().parents[1] / "experiments"
    setup, main_job = load_fair(root / "fair-glyphs.yaml"), load_experiment(root / "glyphs-ablation.yaml")
    assert setup.protocol_changes == []  # the trials train what the re-runs train
    assert setup.fair.default_first and setup.fair.pruner.max_resource == main_job.train.iterations
    assert setup.fair.pruner.min_resource == main_job.train.eval_every
    assert not set(setup.fair.seeds) & set(main_job.grid.seeds)  # tuning noise is not paired with a test seed
    default = validate_experiment(default_experiment(setup, main_job.name), "default.yaml")
    assert [c.cell_id for c in expand_cells(default)] == [c.cell_id for c in expand_cells(main_job)]
