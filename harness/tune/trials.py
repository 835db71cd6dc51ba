"""Trials: counting the study's places, training one trial seed by seed, and a worker's loop."""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import CellConfig
from harness.errors import UserError
from harness.records import CellStatus, StatusRecord, write_record
from harness.results import CellPaths, now
from harness.stopping import Interrupted, StopSignals
from harness.tune.schema import TuneSetup
from harness.tune.study import DEFAULT_ATTR, open_study, worker_seed

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


CPU_ATTR = "cpu_seconds"  # the user attribute holding a trial's CPU time (its worker process), in seconds


class TrialFailed(RuntimeError):
    """A trial's training crashed; Optuna records it as FAIL and the study goes on."""


class SurplusTrial(RuntimeError):
    """A trial created after the study already held its total (a race between workers); it is not counted."""


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of the stale trials that a later trial retried (Optuna's ``retry_history``)."""
    return {number for t in trials for number in t.system_attrs.get("retry_history", [])}


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that take one of the study's places: not surplus, not interrupted,
    not a retried stale one."""
    retried = retried_numbers(trials)
    return [
        t
        for t in trials
        if not t.user_attrs.get("surplus") and not t.user_attrs.get("interrupted") and t.number not in retried
    ]


def interrupted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a stop signal interrupted that no later trial retries yet."""
    queued = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials if t.user_attrs.get("interrupted") and t.number not in queued]


def retry_interrupted(study: optuna.Study, total: int) -> list[int]:
    """Queue each interrupted trial not yet retried (same parameters, same folder) while places are free.

    Returns the numbers of the trials queued again. A retry resumes the folder's checkpoint, as a stale
    trial's retry does; it does not inherit the interrupted trial's reported values.
    """
    trials = study.get_trials(deepcopy=False)
    free = total - len(counted_trials(trials))
    todo = interrupted_trials(trials)[: max(free, 0)]
    for t in todo:
        attrs = {"retry_of": t.number, "folder": t.user_attrs["folder"]}
        if t.user_attrs.get(DEFAULT_ATTR):
            attrs[DEFAULT_ATTR] = True  # the retry of the default trial is never pruned either
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
    return [t.number for t in todo]


def prepare_study(setup: TuneSetup, storage: BaseStorage, total: int) -> tuple[int, list[int]]:
    """Before a run: create the study (or check the stored one was made from the same settings), fail its
    stale trials and queue its interrupted ones again; returns (the counted trials it held, the numbers
    queued again)."""
    import optuna

    study = open_study(setup, storage, setup.study.sampler.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    found = study_counts(study)["total"]
    return found, retry_interrupted(study, total)


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Counted trials by state (lower-case names), plus ``total``."""
    return trial_counts(study.get_trials(deepcopy=False))


def trial_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """:func:`study_counts` of trials already read from the storage."""
    counts: dict[str, int] = {}
    for t in counted_trials(trials):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    counts["total"] = sum(counts.values())
    return counts


def study_is_full(study: optuna.Study, total: int) -> bool:
    """True when the study holds ``total`` counted trials (running ones included) and none is queued."""
    trials = counted_trials(study.get_trials(deepcopy=False))
    return len(trials) >= total and not any(t.state.name == "WAITING" for t in trials)


def trial_cell(
    template: CellConfig,
    params: dict[str, float],
    seed: int,
    experiment: str,
    *,
    folds: int = 0,
    fold: int = 0,
) -> CellConfig:
    """The template cell with the trial's hyperparameters and seed (``folds`` K >= 2: validated on class fold
    ``fold``)."""
    raw = template.model_dump(mode="python")
    raw["loss"]["hparams"] = {**raw["loss"]["hparams"], **params}
    raw.update(seed=seed, experiment=experiment)
    if folds:
        raw["data"].update(val_folds=folds, val_fold=fold, val_fraction=1 / folds)
    return CellConfig.model_validate(raw)


def _mark_pruned(paths: CellPaths, reason: str) -> None:
    write_record(paths.status, StatusRecord(status=CellStatus.PRUNED, reason=reason, finished=now()))
    paths.checkpoint.unlink(missing_ok=True)


def _mark_interrupted(paths: CellPaths, stop: Interrupted) -> None:
    """The folder says failed (not running); its checkpoint stays for the retry to resume."""
    reason = f"interrupted by {stop.name}; the next run of the study retries it"
    write_record(paths.status, StatusRecord(status=CellStatus.FAILED, reason=reason, finished=now()))


class Objective:
    """Trains one trial: each run (seed, class fold) in turn, reporting the running mean of the validation
    metric."""

    def __init__(
        self,
        setup: TuneSetup,
        study_dir: Path,
        total: int,
        progress: bool,
        signals: StopSignals | None = None,
    ) -> None:
        self.setup = setup
        self.study_dir = study_dir
        self.total = total
        self.progress = progress
        self.signals = signals or StopSignals()
        self.surplus = False
        self.interrupted: Interrupted | None = None
        self.user_error: UserError | None = None

    def _place(self, trial: optuna.Trial) -> tuple[int, Path, set[int], bool]:
        """How many counted trials precede this one, the folder it trains in (a stale trial's retry resumes
        that trial's folder, an interrupted trial's retry keeps its ``folder`` attribute), the steps it
        already holds (inherited by a stale trial's retry) and whether it trains the loss's defaults."""
        trials = trial.study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        before = sum(1 for t in counted_trials(trials) if t.number < trial.number)
        origin = me.system_attrs.get("failed_trial")
        folder = me.user_attrs.get("folder", f"trials/{trial.number if origin is None else int(origin)}")
        is_default = bool(me.user_attrs.get(DEFAULT_ATTR))
        return before, self.study_dir / folder, set(me.intermediate_values), is_default

    def __call__(self, trial: optuna.Trial) -> float:
        before, folder, reported, is_default = self._place(trial)
        if before >= self.total:
            trial.set_user_attr("surplus", True)
            self.surplus = True
            raise SurplusTrial(f"the study already holds {self.total} trials")
        setup = self.setup
        params = {
            name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in setup.study.space.items()
        }
        trial.set_user_attr("folder", str(folder.relative_to(self.study_dir)))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        started = time.process_time()
        try:
            return self._train(trial, params, folder, reported, is_default)
        finally:  # what the trial cost, pruned or not: the fair report states each study's budget in it
            trial.set_user_attr(CPU_ATTR, round(time.process_time() - started, 3))

    def _train(
        self,
        trial: optuna.Trial,
        params: dict[str, float],
        folder: Path,
        reported: set[int],
        is_default: bool,
    ) -> float:
        """Train the trial's runs in turn; the mean of their selected validation values."""
        import optuna

        from harness import train

        setup = self.setup
        values: list[float] = []
        for index, (seed, fold) in enumerate(setup.runs):
            cell = trial_cell(
                setup.template, params, seed, setup.name, folds=setup.study.folds, fold=fold or 0
            )
            paths = CellPaths(folder / setup.run_folder(seed, fold))
            if index == 0:
                trial.set_user_attr("cell_id", cell.cell_id)
            offset = index * setup.template.train.iterations

            def on_eval(
                iteration: int, metrics: dict[str, float], offset: int = offset, paths: CellPaths = paths
            ) -> None:
                running = (sum(values) + metrics[setup.metric]) / (len(values) + 1)
                if offset + iteration not in reported:
                    trial.report(running, offset + iteration)
                # never once all is trained, never the defaults' trial (the best is never worse than it)
                if not is_default and offset + iteration < setup.steps and trial.should_prune():
                    reason = f"pruned at iteration {iteration}: val {setup.metric} {running:.4f}"
                    _mark_pruned(paths, reason)
                    raise optuna.TrialPruned(reason)

            try:
                with self.signals.armed():
                    outcome = train.train_cell(
                        cell, paths, on_eval=on_eval, evaluate_test=False, progress=self.progress
                    )
            except Interrupted as stop:
                return self._interrupted(trial, paths, stop)
            except (
                UserError
            ) as err:  # the user's to fix (a setting, the data): one line, not Optuna's traceback
                return self._stopped_by(trial, err)
            except (optuna.TrialPruned, KeyboardInterrupt):
                raise
            except Exception as err:  # a crash ends this trial, not the study
                trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
                raise TrialFailed(f"{type(err).__name__}: {err}") from err
            if outcome.status != CellStatus.FINISHED:  # non-finite loss: Optuna records a NaN value as FAIL
                trial.set_user_attr("fail_reason", outcome.reason or outcome.status)
                return math.nan
            values.append(float(outcome.metrics["selected"]["val"][setup.metric]))
        return sum(values) / len(values)

    def _stopped_by(self, trial: optuna.Trial, err: UserError) -> float:
        """Keep the user's mistake for the worker to raise; the trial is recorded as interrupted, so a run
        after the fix retries it (same parameters, same folder) instead of counting it as failed."""
        import optuna

        self.user_error = err
        trial.set_user_attr("interrupted", "a user error")
        trial.set_user_attr("fail_reason", str(err))
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the caller's logging context restores it
        return math.nan

    def _interrupted(self, trial: optuna.Trial, paths: CellPaths, stop: Interrupted) -> float:
        """Record the interruption; NaN makes Optuna fail the trial, whose warning lines are silenced."""
        import optuna

        self.interrupted = stop
        trial.set_user_attr("interrupted", stop.name)
        trial.set_user_attr("fail_reason", f"interrupted by {stop.name}")
        if paths.status.is_file():
            _mark_interrupted(paths, stop)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the caller's logging context restores it
        return math.nan


def run_worker(
    setup: TuneSetup,
    storage: BaseStorage,
    study_dir: Path,
    total: int,
    *,
    worker: int,
    progress: bool,
    signals: StopSignals | None = None,
) -> None:
    """Run trials on the shared study until it holds ``total`` counted trials.

    Raises :class:`Interrupted` after a stop signal, once the running trial is recorded as failed.
    """
    signals = signals or StopSignals()
    import optuna

    probe = optuna.load_study(study_name=setup.name, storage=storage)
    trials_before = len(probe.get_trials(deepcopy=False))
    study = open_study(
        setup, storage, worker_seed(setup.study.sampler.seed, worker, trials_before, socket.gethostname())
    )
    objective = Objective(setup, study_dir, total, progress, signals)
    while not study_is_full(study, total):
        signals.check()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=(TrialFailed, SurplusTrial), gc_after_trial=True)
        if objective.interrupted is not None:
            raise objective.interrupted
        if objective.user_error is not None:
            raise objective.user_error
        if objective.surplus:
            return


def score_params(
    setup: TuneSetup,
    params: dict[str, float],
    folder: Path,
    *,
    progress: bool,
    signals: StopSignals | None = None,
) -> float | None:
    """Train ``params`` on ``setup``'s protocol outside any study, every run (seed, class fold) in ``folder``
    as a trial would, never pruned, never on the test set; the mean selected validation value (None when a
    run did not finish). A run already finished there is read back, an interrupted one resumes.

    Raises :class:`Interrupted` after a stop signal (the running cell keeps its checkpoint).
    """
    from harness import train

    signals = signals or StopSignals()
    values: list[float] = []
    for seed, fold in setup.runs:
        cell = trial_cell(setup.template, params, seed, setup.name, folds=setup.study.folds, fold=fold or 0)
        paths = CellPaths(folder / setup.run_folder(seed, fold))
        final = paths.read_final()
        if final is None or final.status != CellStatus.FINISHED:
            with signals.armed():
                outcome = train.train_cell(cell, paths, evaluate_test=False, progress=progress)
            if outcome.status != CellStatus.FINISHED:
                return None
            metrics = outcome.metrics
        else:
            metrics = final.metrics
        values.append(float(metrics["selected"]["val"][setup.metric]))
    return sum(values) / len(values)
