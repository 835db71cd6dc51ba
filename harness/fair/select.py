"""Choosing each loss's tuned values on validation: the best trial, or, when the trials trained a shorter
protocol than the re-runs, the best of the top trials and the defaults re-scored on the re-runs' protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.fair.schema import FairSetup, LossStudy
from harness.fair.studies import StudyState, complete_trials, study_dir
from harness.files import atomic_write_json
from harness.stopping import StopSignals
from harness.tune.trials import score_params

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

RESCORE = "rescore"  # a study's folder of re-scored candidates: rescore/<trial number or "default">/
DEFAULT_KEY = "default"


@dataclass(frozen=True)
class Rescored:
    """One candidate re-trained on the re-runs' protocol: the trial it came from (None: the defaults), its
    values, its value on the trials' protocol and on the re-runs' one."""

    number: int | None
    params: dict[str, float]
    trial_value: float | None
    value: float | None


@dataclass(frozen=True)
class Selection:
    """A loss's tuned values and the validation values they were chosen by (fractions)."""

    study: LossStudy
    params: dict[str, float]  # empty: the defaults are kept (no complete trial, or the defaults won)
    number: int | None  # the trial they came from (None: the defaults)
    value: float | None  # the chosen values' validation value, on the re-runs' protocol
    default_value: float | None  # the defaults' validation value, on the same protocol
    rescored: list[Rescored] = field(default_factory=list)  # empty: the trials trained the re-runs' protocol


def select_direct(state: StudyState) -> Selection:
    """The study's best trial, scored on the protocol it trained (the re-runs' protocol)."""
    return Selection(state.study, state.best_params, state.best_number, state.best_value, state.default_value)


def candidates(setup: FairSetup, study: LossStudy, storage: BaseStorage) -> list[tuple[int | None, dict]]:
    """What a re-score trains: the defaults (every searched value at its default), then the best
    ``fair.rescore`` complete trials other than the default trial."""
    top = [t for t in complete_trials(study, storage) if not t.user_attrs.get("default")]
    chosen: list[tuple[int | None, dict]] = [(None, dict(study.setup.default_params))]
    chosen += [(t.number, dict(t.params)) for t in top[: setup.fair.rescore]]
    return chosen


def rescore(
    setup: FairSetup,
    state: StudyState,
    storage: BaseStorage,
    fair_dir: Path,
    *,
    progress: bool,
    signals: StopSignals | None = None,
) -> Selection:
    """Re-train the candidates of one study on the re-runs' protocol, on validation (its trial seeds and
    class folds), in ``studies/<loss>/rescore/``; the best of them (ties: the defaults, then the earlier
    trial) is the selection. Finished candidates are read back; raises Interrupted after a stop signal."""
    study = state.study
    assert study.full is not None, "a re-score needs the re-runs' protocol"
    values = {number: value for number, value in state.history}
    folder = study_dir(fair_dir, study) / RESCORE
    results = []
    for number, params in candidates(setup, study, storage):
        where = folder / (DEFAULT_KEY if number is None else str(number))
        value = score_params(study.full, params, where, progress=progress, signals=signals)
        trial_value = state.default_value if number is None else values.get(number)
        results.append(Rescored(number, params, trial_value, value))
        atomic_write_json(where / "rescore.json", {"trial": number, "params": params, "value": value})
    scored = [r for r in results if r.value is not None]
    default = results[0]
    if not scored:
        return Selection(study, {}, None, None, None, results)
    best = max(scored, key=lambda r: (r.value or 0.0, r.number is None, -(r.number or 0)))
    params = {} if best.number is None else best.params
    return Selection(study, params, best.number, best.value, default.value, results)


def select_all(
    setup: FairSetup,
    states: list[StudyState],
    storage: BaseStorage,
    fair_dir: Path,
    *,
    progress: bool,
    signals: StopSignals | None = None,
) -> list[Selection]:
    """Every loss's selection: re-scored when the trials trained a shorter protocol, else the best trial."""
    if not setup.protocol_changes:
        return [select_direct(state) for state in states]
    return [rescore(setup, s, storage, fair_dir, progress=progress, signals=signals) for s in states]


def selection_record(selections: list[Selection]) -> str:
    """The selections as JSON (``selection.json`` of a fair run)."""
    return json.dumps(
        {
            s.study.key: {
                "params": s.params,
                "trial": s.number,
                "value": s.value,
                "default_value": s.default_value,
                "rescored": [r.__dict__ for r in s.rescored],
            }
            for s in selections
        },
        indent=2,
    )
