"""The studies of a fair run: one per loss on one storage, filled to the same trial count by any number of
workers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.fair.schema import FairSetup, LossStudy
from harness.stopping import StopSignals
from harness.studies.storage import sqlite_url
from harness.tune.study import DEFAULT_ATTR
from harness.tune.trials import (
    CPU_ATTR,
    counted_trials,
    prepare_study,
    run_worker,
    study_counts,
    study_is_full,
)

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

STORAGE_ENV = "HARNESS_FAIR_STORAGE"  # how a worker process learns its parent's storage URL


def default_storage(fair_dir: Path) -> str:
    """``sqlite:///<fair_dir>/studies.db`` (absolute, so worker processes agree on it): every study in one
    file."""
    return sqlite_url(fair_dir / "studies.db")


def study_dir(fair_dir: Path, study: LossStudy) -> Path:
    """A study's folder: its trials, summary.md and figures."""
    return fair_dir / "studies" / study.key


def prepare_studies(setup: FairSetup, storage: BaseStorage) -> list[str]:
    """Create every study (or check the stored one was made from the same settings), fail its stale trials
    and queue its interrupted trials again; returns ``study #number`` of each trial queued again."""
    retried = []
    for study in setup.studies:
        _, numbers = prepare_study(study.setup, storage, setup.fair.trials)
        retried += [f"{study.key} #{number}" for number in numbers]
    return retried


def worker_order(studies: list[LossStudy], worker: int) -> list[LossStudy]:
    """The order a worker visits the studies: rotated by its index, so workers start on different studies."""
    shift = worker % len(studies) if studies else 0
    return studies[shift:] + studies[:shift]


def fill_studies(
    setup: FairSetup,
    storage: BaseStorage,
    fair_dir: Path,
    *,
    worker: int,
    progress: bool,
    signals: StopSignals,
) -> None:
    """One worker's share: each study in :func:`worker_order` gets trials until it holds ``fair.trials``.

    Raises :class:`Interrupted` after a stop signal, once the running trial is recorded as failed.
    """
    for study in worker_order(setup.studies, worker):
        run_worker(
            study.setup,
            storage,
            study_dir(fair_dir, study),
            setup.fair.trials,
            worker=worker,
            progress=progress,
            signals=signals,
        )


@dataclass(frozen=True)
class StudyState:
    """Where one loss's study stands: counted trials by state, and its best trial once one completed."""

    study: LossStudy
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, float]
    best_number: int | None
    default_value: float | None = None  # the value of the trial at the loss's defaults, once complete
    # each counted trial in number order: (number, value) with value None unless complete
    history: tuple[tuple[int, float | None], ...] = ()
    cpu_seconds: float = 0.0  # the CPU time every trial of the study took (the interrupted ones too)
    default_cpu_seconds: float | None = None  # the default trial's: one full, unpruned trial

    def best_so_far(self) -> list[float | None]:
        """The best complete value after each counted trial (None before the first complete one)."""
        out: list[float | None] = []
        best: float | None = None
        for _, value in self.history:
            if value is not None and (best is None or value > best):
                best = value
            out.append(best)
        return out

    def last_third_gain(self) -> float | None:
        """How much the last third of the trials raised the best value (None before any complete trial in
        the first two thirds, or with fewer than 3 trials)."""
        curve = self.best_so_far()
        if len(curve) < 3:
            return None
        cut = curve[math.ceil(2 * len(curve) / 3) - 1]
        return None if cut is None or curve[-1] is None else curve[-1] - cut

    @property
    def settled(self) -> bool:
        """Full, with no trial still running or waiting anywhere."""
        total = self.study.setup.study.trials
        return self.counts["total"] >= total and not (
            self.counts.get("running") or self.counts.get("waiting")
        )


def study_state(study: LossStudy, storage: BaseStorage) -> StudyState:
    """The stored state of a loss's study."""
    import optuna

    loaded = optuna.load_study(study_name=study.name, storage=storage)
    counts = study_counts(loaded)
    trials = loaded.get_trials(deepcopy=False)
    counted = sorted(counted_trials(trials), key=lambda t: t.number)
    complete = [t for t in counted if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    history = tuple(
        (
            t.number,
            float(t.value) if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None else None,
        )
        for t in counted
    )
    cpu = sum(float(t.user_attrs.get(CPU_ATTR, 0.0)) for t in trials)
    at_default = [t for t in complete if t.user_attrs.get(DEFAULT_ATTR)]
    default_value = float(at_default[0].value) if at_default and at_default[0].value is not None else None
    default_cpu = (
        float(at_default[0].user_attrs[CPU_ATTR])
        if at_default and CPU_ATTR in at_default[0].user_attrs
        else None
    )
    if not complete:
        return StudyState(study, counts, None, {}, None, None, history, cpu, None)
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert best.value is not None  # a complete trial has its value
    return StudyState(
        study,
        counts,
        float(best.value),
        dict(best.params),
        best.number,
        default_value,
        history,
        cpu,
        default_cpu,
    )


def complete_trials(study: LossStudy, storage: BaseStorage) -> list[FrozenTrial]:
    """The study's counted complete trials, best first (ties: the earlier trial first)."""
    import optuna

    loaded = optuna.load_study(study_name=study.name, storage=storage)
    complete = [
        t
        for t in counted_trials(loaded.get_trials(deepcopy=False))
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    return sorted(complete, key=lambda t: (-float(t.value or 0.0), t.number))


def all_full(setup: FairSetup, storage: BaseStorage) -> bool:
    """Whether every study holds its trial count (running trials included)."""
    import optuna

    return all(
        study_is_full(optuna.load_study(study_name=s.name, storage=storage), setup.fair.trials)
        for s in setup.studies
    )
