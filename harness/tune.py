"""``python -m harness.tune FILE``: an Optuna study over the loss hyperparameters of one grid cell.

A tune file is an experiment file (same schema, ``base:`` chains, ``--set`` overrides) whose grid
resolves to exactly one cell, plus a ``study:`` section: the search space, the TPE sampler, the pruner,
the importance evaluator and the seeds. Each trial trains that cell with the suggested hyperparameters
into ``<results>/<study>/trials/<number>/``, reports the validation metric (``train.select_metric``,
Recall@1 in the shipped files) at every evaluation so the pruner can stop it, and returns the best
validation value; the test set is never looked at. A trial whose loss turns non-finite is recorded as
FAIL and the study goes on.

The study lives in an Optuna storage: an SQLite file ``<results>/<study>/study.db`` by default,
``--storage postgresql://...`` for many machines, ``--storage journal:FILE`` for a journal file.
``--trials N`` is the total the study should hold (complete + pruned + failed), so a re-run continues an
interrupted study and does nothing once it is full; ``--workers N`` runs N processes on the storage.
At the end the parent writes ``best.yaml`` (an experiment file for ``python -m harness.run``),
``summary.md`` and the importance, history, slice, intermediate-value and timeline plots.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.config import (
    CellConfig,
    Experiment,
    LossSpec,
    did_you_mean,
    expand_cells,
    load_raw,
    set_dotted,
    validate_experiment,
    validation_message,
)
from harness.errors import UserError, cli_main
from harness.results import CellPaths, atomic_write_json, atomic_write_text, now

# Optuna is imported inside functions: validating a tune file should not pay for it.

EXIT_FAILED_WORKER = 1
STORAGE_ENV = "HARNESS_TUNE_STORAGE"  # how a worker process learns its parent's storage URL
STATE_WORDS = (("complete", "complete"), ("pruned", "pruned"), ("fail", "failed"))

# ---------------------------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        for key in value if isinstance(value, dict) else ():
            if key not in cls.model_fields:
                raise ValueError(f"unknown field {key!r}{did_you_mean(str(key), list(cls.model_fields))}")
        return value


class Range(_Strict):
    """The interval one hyperparameter is drawn from (``log: true`` samples it on a log scale)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low {self.low}, high {self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got low {self.low}); raise low or set log: false")
        return self


class SamplerConfig(_Strict):
    """TPE with every option that changed default across Optuna versions given explicitly."""

    name: Literal["tpe"]
    multivariate: bool
    constant_liar: bool
    n_startup_trials: int = Field(ge=0)
    seed: int


class _Kinded(_Strict):
    """A section whose ``KIND`` field picks one of several kinds, each taking its own settings."""

    KIND: ClassVar[str]
    WHAT: ClassVar[str]
    SETTINGS: ClassVar[dict[str, tuple[str, ...]]]  # kind -> the settings it takes
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # settings that must be written out when the kind takes them

    @model_validator(mode="before")
    @classmethod
    def _settings_of_kind(cls, value: Any) -> Any:
        kind = value.get(cls.KIND) if isinstance(value, dict) else None
        if not isinstance(kind, str):
            return value
        if kind not in cls.SETTINGS:
            raise ValueError(f"unknown {cls.WHAT} {kind!r}{did_you_mean(kind, tuple(cls.SETTINGS))}")
        own = cls.SETTINGS[kind]
        given = {key for key, setting in value.items() if setting is not None}  # null: not set
        foreign = sorted({key for keys in cls.SETTINGS.values() for key in keys} - set(own) & given)
        if foreign:
            takes = f"; it takes {', '.join(own)}" if own else ""
            raise ValueError(f"{cls.WHAT} {kind!r} takes no {', '.join(foreign)}{takes}")
        missing = [key for key in own if key in cls.REQUIRED and key not in given]
        if missing:
            raise ValueError(f"{cls.WHAT} {kind!r} needs {', '.join(missing)} written out "
                             f"(it takes {', '.join(own)})")  # fmt: skip
        return value

    @property
    def kind(self) -> str:
        return str(getattr(self, self.KIND))

    def settings(self) -> dict[str, Any]:
        """The settings of the chosen kind (the keyword arguments of its Optuna class)."""
        return {key: getattr(self, key) for key in self.SETTINGS[self.kind]}

    def resolved(self) -> dict[str, Any]:
        """The kind and its settings, as written in a resolved tune file."""
        return {self.KIND: self.kind, **self.settings()}


class PrunerConfig(_Kinded):
    """Hyperband, successive halving or none; resources are training iterations (the report steps)."""

    KIND = "name"
    WHAT = "pruner"
    SETTINGS = {
        "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
        "successive_halving": (
            "min_resource",
            "reduction_factor",
            "min_early_stopping_rate",
            "bootstrap_count",
        ),
        "none": (),
    }
    REQUIRED = ("min_resource", "max_resource", "reduction_factor", "min_early_stopping_rate")

    name: Literal["hyperband", "successive_halving", "none"]
    min_resource: int | None = Field(None, ge=1)
    max_resource: int | Literal["auto"] | None = None
    reduction_factor: int | None = Field(None, ge=2)
    min_early_stopping_rate: int | None = Field(None, ge=0)
    bootstrap_count: int = Field(0, ge=0)

    def build(self) -> Any:
        """The Optuna pruner."""
        from optuna import pruners

        kinds = {"hyperband": pruners.HyperbandPruner, "successive_halving": pruners.SuccessiveHalvingPruner}
        return kinds[self.name](**self.settings()) if self.name in kinds else pruners.NopPruner()


class ImportanceConfig(_Kinded):
    """The hyperparameter-importance evaluator, named explicitly (Optuna's default changed in 5.0)."""

    KIND = "evaluator"
    WHAT = "importance evaluator"
    SETTINGS = {
        "ped_anova": ("target_quantile", "region_quantile", "evaluate_on_local"),
        "fanova": ("n_trees", "max_depth", "seed"),
    }

    evaluator: Literal["ped_anova", "fanova"]
    target_quantile: float = Field(0.1, gt=0, lt=1)
    region_quantile: float = Field(1.0, gt=0, le=1)
    evaluate_on_local: bool = True
    n_trees: int = Field(64, ge=1)
    max_depth: int = Field(64, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fanova_needs_sklearn(self) -> ImportanceConfig:
        if self.evaluator == "fanova":
            try:
                import sklearn  # noqa: F401
            except ImportError:
                raise ValueError("evaluator 'fanova' needs scikit-learn, which the harness does not install; "
                                 "use 'ped_anova'") from None  # fmt: skip
        return self

    def build(self) -> Any:
        """The Optuna importance evaluator."""
        from optuna import importance

        kinds = {
            "ped_anova": importance.PedAnovaImportanceEvaluator,
            "fanova": importance.FanovaImportanceEvaluator,
        }
        return kinds[self.evaluator](**self.settings())

    def describe(self) -> str:
        """The evaluator class with its settings, as written in the summary."""
        settings = ", ".join(f"{key}={value}" for key, value in self.settings().items())
        return f"{type(self.build()).__name__}({settings})"


class HeartbeatConfig(_Strict):
    """Stale-trial handling on RDB storages: a trial whose process stops beating is failed and retried."""

    interval: int = Field(60, ge=1)
    grace_period: int = Field(180, ge=2)
    max_retry: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _grace_longer(self) -> HeartbeatConfig:
        if self.grace_period <= self.interval:
            raise ValueError(f"grace_period ({self.grace_period} s) must exceed interval ({self.interval} s)")
        return self


class StudyConfig(_Strict):
    """The ``study:`` section of a tune file."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    trials: int = Field(ge=1)
    space: dict[str, Range] = Field(min_length=1)
    sampler: SamplerConfig
    pruner: PrunerConfig
    importance: ImportanceConfig
    seeds: list[int] | None = Field(None, min_length=1)
    best_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    best_set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides for best.yaml's protocol
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)

    def resolved(self) -> dict[str, Any]:
        """Every setting in force (those of the chosen pruner and evaluator only), as a YAML mapping."""
        out = self.model_dump(mode="json", exclude={"pruner", "importance"})
        return {**out, "pruner": self.pruner.resolved(), "importance": self.importance.resolved()}

    @field_validator("seeds", "best_seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds


class _TuneSection(_Strict):
    study: StudyConfig


@dataclass(frozen=True)
class TuneSetup:
    """A validated tune file: the experiment, its one cell (the trial template) and the study settings."""

    source: str
    experiment: Experiment
    template: CellConfig
    study: StudyConfig

    @property
    def name(self) -> str:
        return self.study.name or self.experiment.name

    @property
    def seeds(self) -> list[int]:
        return list(self.study.seeds or [self.template.seed])

    @property
    def metric(self) -> str:
        return self.template.train.select_metric

    @property
    def steps(self) -> int:
        """Report steps of a whole trial: the training iterations of every seed, back to back."""
        return self.template.train.iterations * len(self.seeds)


def _loss_parameters(name: str) -> list[str]:
    """The numeric hyperparameters the loss's factory accepts (not ``preset``, not switches)."""
    import losses

    params = inspect.signature(losses.info(name).factory).parameters.values()
    return [p.name for p in params if p.name != "preset" and "bool" not in str(p.annotation)]


def _check_space(setup: TuneSetup) -> None:
    """Every searched name is a hyperparameter of the loss, and the loss builds at both ends of its range."""
    spec = setup.template.loss
    accepted = _loss_parameters(spec.name)
    for name, bounds in setup.study.space.items():
        where = f"{setup.source}: study.space.{name}"
        if name not in accepted:
            raise UserError(
                f"{where}: loss {spec.name!r} has no hyperparameter {name!r}{did_you_mean(name, accepted)}"
            )
        for end in (bounds.low, bounds.high):
            try:
                LossSpec(name=spec.name, preset=spec.preset, hparams={**spec.hparams, name: end})
            except ValidationError as err:
                message = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise UserError(f"{where}: {name}={end}: {message}; narrow the range") from None


def _check_protocol(setup: TuneSetup) -> None:
    """The template may only select on validation data, and the pruner's resources must fit a trial."""
    train, src = setup.template.train, setup.source
    if train.select_on != "val":
        raise UserError(f"{src}: train.select_on: a study optimises validation data only, got {train.select_on!r}; "
                        "set train.select_on: val (the test set is for best.yaml's re-run)")  # fmt: skip
    if setup.template.data.val_fraction <= 0:
        raise UserError(f"{src}: data.val_fraction: a study needs validation classes, got "
                        f"{setup.template.data.val_fraction}; set it above 0, e.g. 0.2")  # fmt: skip
    pruner = setup.study.pruner
    for key in ("min_resource", "max_resource"):
        value = getattr(pruner, key)
        if isinstance(value, int) and value > setup.steps:
            raise UserError(f"{src}: study.pruner.{key}: {value} is beyond the {setup.steps} iterations a trial "
                            f"trains ({len(setup.seeds)} seed(s) x train.iterations); lower it")  # fmt: skip


def validate_tune(raw: dict[str, Any], source: str) -> TuneSetup:
    """Validate a raw tune mapping (an experiment plus ``study:``); every mistake is one line."""
    raw = dict(raw)
    if "study" not in raw:
        raise UserError(f"{source}: no study: section; a tune file is an experiment file plus study: "
                        "(see experiments/tune-glyphs.yaml)")  # fmt: skip
    section = {"study": raw.pop("study")}
    experiment = validate_experiment(raw, source)
    try:
        study = _TuneSection.model_validate(section).study
    except ValidationError as err:
        raise UserError(validation_message(source, err)) from None
    cells = expand_cells(experiment)
    if len(cells) != 1:
        g = experiment.grid
        raise UserError(
            f"{source}: grid: a tune file needs exactly one cell (one loss, dataset, size, variant and seed), "
            f"got {len(cells)} (losses {[loss.name for loss in g.losses]}, datasets {g.datasets}, "
            f"sizes {g.embedding_sizes}, variants {list(g.variants)}, seeds {g.seeds}); narrow the grid"
        )
    setup = TuneSetup(source, experiment, cells[0], study)
    _check_protocol(setup)
    _check_space(setup)
    lows = {name: bounds.low for name, bounds in study.space.items()}
    validate_experiment(best_experiment(setup, lows), f"{source} (best.yaml with study.best_set)")
    return setup


def load_tune(path: str | Path, sets: list[str] | None = None) -> TuneSetup:
    """Read a tune file (with its ``base:`` files and ``--set`` overrides) and validate it."""
    return validate_tune(load_raw(path, sets), str(path))


# --------------------------------------------------------------------------------------------- storage


def default_storage(study_dir: Path) -> str:
    """``sqlite:///<study_dir>/study.db`` (absolute, so worker processes agree on it)."""
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """A storage URL with its password hidden, for messages and the summary."""
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _retry_callback(max_retry: int) -> dict[str, Any]:
    """The RDBStorage keyword for retrying heartbeat-stale trials, by installed Optuna version."""
    import optuna.storages as storages

    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        callback = storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
        return {"heartbeat_stale_trial_callback": callback}
    callback = storages.RetryFailedTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
    return {"failed_trial_callback": callback}


def with_installed_driver(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; the harness's test extra installs
    psycopg2, so the bare scheme gets whichever of the two is importable (psycopg first).
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    return f"postgresql://{rest}"


def open_storage(url: str, heartbeat: HeartbeatConfig) -> Any:
    """An Optuna storage: ``journal:FILE`` is a journal file, anything else an SQLAlchemy URL.

    SQLite waits up to 60 s for the file lock, so several worker processes can share one file.
    RDB storages record a heartbeat; a trial whose process died is failed and retried once stale.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:") :].removeprefix("//"))
        if not str(path) or str(path) == ".":
            raise UserError(f"--storage {url!r}: expected journal:FILE, e.g. journal:results/ms/journal.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                with_installed_driver(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace_period, **_retry_callback(heartbeat.max_retry),
            )  # fmt: skip
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--storage {shown_url(url)}: cannot open it ({first}); expected a reachable database "
                        "URL such as sqlite:///study.db or postgresql://user:password@host/db, "
                        "or journal:FILE") from None  # fmt: skip


def _fingerprint(setup: TuneSetup) -> dict[str, Any]:
    """What must not change between runs of one study: the trial template and the search space."""
    exclude = {"experiment": True, "data": {"root", "cache_dir", "workers"}}
    return {
        "template": setup.template.model_dump(mode="json", exclude=exclude),
        "space": {k: v.model_dump() for k, v in setup.study.space.items()},
        "seeds": setup.seeds,
    }


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def open_study(setup: TuneSetup, storage: Any, sampler_seed: int) -> Any:
    """Create the study or load it (``load_if_exists``); refuse one created from a different tune file."""
    import optuna

    sampler_cfg = setup.study.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            multivariate=sampler_cfg.multivariate, constant_liar=sampler_cfg.constant_liar,
            n_startup_trials=sampler_cfg.n_startup_trials, seed=sampler_seed,
        )  # fmt: skip
    study = optuna.create_study(
        study_name=setup.name, storage=storage, sampler=sampler, pruner=setup.study.pruner.build(),
        direction="maximize", load_if_exists=True,
    )  # fmt: skip
    fingerprint = json.loads(json.dumps(_fingerprint(setup)))
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("objective", f"val {setup.metric}")
    elif stored != fingerprint:
        changed = ", ".join(_differences(stored, fingerprint)[:4])
        raise UserError(f"{setup.source}: study {setup.name!r} in this storage was made with other settings "
                        f"({changed}); give the study a new name (--set study.name=...) or restore them")  # fmt: skip
    return study


def worker_seed(base: int, worker: int, trials_before: int, host: str) -> int:
    """A sampler seed per host, worker and run, so that no two workers draw the same startup trials."""
    import numpy as np

    return int(
        np.random.SeedSequence([base, worker, trials_before, zlib.crc32(host.encode())]).generate_state(1)[0]
    )


# ---------------------------------------------------------------------------------------------- trials


class TrialFailed(RuntimeError):
    """A trial's training crashed; Optuna records it as FAIL and the study goes on."""


class SurplusTrial(RuntimeError):
    """A trial created after the study already held its total (a race between workers); it is not counted."""


def _retry_history(trial: Any) -> list[int]:
    return list(trial.system_attrs.get("retry_history", []))


def counted_trials(trials: list[Any]) -> list[Any]:
    """The trials that take one of the study's places: not surplus, not a stale trial that was retried."""
    retried = {number for t in trials for number in _retry_history(t)}
    return [t for t in trials if not t.user_attrs.get("surplus") and t.number not in retried]


def study_counts(study: Any) -> dict[str, int]:
    """Counted trials by state (lower-case names), plus ``total``."""
    counts: dict[str, int] = {}
    for t in counted_trials(study.get_trials(deepcopy=False)):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    counts["total"] = sum(counts.values())
    return counts


def study_is_full(study: Any, total: int) -> bool:
    """True when the study holds ``total`` counted trials (running ones included) and none is queued."""
    trials = counted_trials(study.get_trials(deepcopy=False))
    return len(trials) >= total and not any(t.state.name == "WAITING" for t in trials)


def trial_cell(template: CellConfig, params: dict[str, float], seed: int, experiment: str) -> CellConfig:
    """The template cell with the trial's hyperparameters and seed."""
    raw = template.model_dump(mode="python")
    raw["loss"]["hparams"] = {**raw["loss"]["hparams"], **params}
    raw.update(seed=seed, experiment=experiment)
    return CellConfig.model_validate(raw)


def _mark_pruned(paths: CellPaths, reason: str) -> None:
    atomic_write_json(paths.status, {"status": "pruned", "reason": reason, "finished": now()})
    paths.checkpoint.unlink(missing_ok=True)


class Objective:
    """Trains one trial: each seed in turn, reporting the running mean of the validation metric."""

    def __init__(self, setup: TuneSetup, study_dir: Path, total: int, progress: bool) -> None:
        self.setup = setup
        self.study_dir = study_dir
        self.total = total
        self.progress = progress
        self.surplus = False

    def _place(self, trial: Any) -> tuple[int, int, set[int]]:
        """How many counted trials precede this one, the trial number whose folder it uses (a retry
        resumes the stale trial's folder) and the steps it already holds (inherited by a retry)."""
        trials = trial.study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        before = sum(1 for t in counted_trials(trials) if t.number < trial.number)
        origin = me.system_attrs.get("failed_trial")
        return before, trial.number if origin is None else int(origin), set(me.intermediate_values)

    def __call__(self, trial: Any) -> float:
        import optuna

        from harness import train

        before, folder_number, reported = self._place(trial)
        if before >= self.total:
            trial.set_user_attr("surplus", True)
            self.surplus = True
            raise SurplusTrial(f"the study already holds {self.total} trials")
        setup = self.setup
        params = {
            name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in setup.study.space.items()
        }
        folder = self.study_dir / "trials" / str(folder_number)
        trial.set_user_attr("folder", str(folder.relative_to(self.study_dir)))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        values: list[float] = []
        for index, seed in enumerate(setup.seeds):
            cell = trial_cell(setup.template, params, seed, setup.name)
            paths = CellPaths(folder if len(setup.seeds) == 1 else folder / f"s{seed}")
            if index == 0:
                trial.set_user_attr("cell_id", cell.cell_id)
            offset = index * setup.template.train.iterations

            def on_eval(
                iteration: int, metrics: dict[str, float], offset: int = offset, paths: CellPaths = paths
            ) -> None:
                running = (sum(values) + metrics[setup.metric]) / (len(values) + 1)
                if offset + iteration not in reported:
                    trial.report(running, offset + iteration)
                if offset + iteration < setup.steps and trial.should_prune():  # never once all is trained
                    reason = f"pruned at iteration {iteration}: val {setup.metric} {running:.4f}"
                    _mark_pruned(paths, reason)
                    raise optuna.TrialPruned(reason)

            try:
                outcome = train.train_cell(
                    cell, paths, on_eval=on_eval, evaluate_test=False, progress=self.progress
                )
            except (optuna.TrialPruned, UserError, KeyboardInterrupt):
                raise
            except Exception as err:  # a crash ends this trial, not the study
                trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
                raise TrialFailed(f"{type(err).__name__}: {err}") from err
            if outcome.status != "finished":  # non-finite loss: Optuna records a NaN value as FAIL
                trial.set_user_attr("fail_reason", outcome.reason or outcome.status)
                return math.nan
            values.append(float(outcome.metrics["selected"]["val"][setup.metric]))
        return sum(values) / len(values)


def run_worker(
    setup: TuneSetup, storage: Any, study_dir: Path, total: int, *, worker: int, progress: bool
) -> None:
    """Run trials on the shared study until it holds ``total`` counted trials."""
    import optuna

    probe = optuna.load_study(study_name=setup.name, storage=storage)
    trials_before = len(probe.get_trials(deepcopy=False))
    study = open_study(
        setup, storage, worker_seed(setup.study.sampler.seed, worker, trials_before, socket.gethostname())
    )
    objective = Objective(setup, study_dir, total, progress)
    while not study_is_full(study, total):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=(TrialFailed, SurplusTrial), gc_after_trial=True)
        if objective.surplus:
            return


# --------------------------------------------------------------------------------------------- outputs


def best_experiment(setup: TuneSetup, best_params: dict[str, float]) -> dict[str, Any]:
    """An experiment mapping for ``harness.run``: the template's resolved protocol, the best hparams, several seeds."""
    t = setup.template
    protocol = t.model_dump(mode="json", include={"data", "model", "optim", "schedule", "train", "evaluate"})
    loss: dict[str, Any] = {"name": t.loss.name, "hparams": {**t.loss.hparams, **best_params}}
    if t.loss.preset is not None:
        loss["preset"] = t.loss.preset
    if t.loss.label is not None:
        loss["label"] = t.loss.label
    doc = {
        "name": f"{setup.name}-best",
        "description": f"best hyperparameters of study {setup.name} (val {setup.metric}), over several seeds",
        **protocol,
        "grid": {
            "losses": [loss], "datasets": [t.dataset], "embedding_sizes": [t.embedding_size],
            "seeds": list(setup.study.best_seeds), "variants": {t.variant: {}},
        },
    }  # fmt: skip
    for key, value in setup.study.best_set.items():
        set_dotted(doc, key, copy.deepcopy(value), where=f"{setup.source}: study.best_set")
    return doc


def write_best(setup: TuneSetup, study: Any, study_dir: Path) -> Path | None:
    """``best.yaml`` from the best complete trial (None when no trial completed)."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    path = study_dir / "best.yaml"
    doc = best_experiment(setup, dict(best.params))
    validate_experiment(json.loads(json.dumps(doc)), str(path))
    header = (f"# Written by harness.tune: study {setup.name}, trial {best.number}, val {setup.metric} "
              f"{best.value:.4f}.\n# Re-run over seeds {setup.study.best_seeds} on the test set:\n"
              f"#   python -m harness.run {path}\n")  # fmt: skip
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
    return path


def importances(setup: TuneSetup, study: Any) -> dict[str, float] | None:
    """Hyperparameter importances with the configured evaluator (None with fewer than 2 complete trials)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=setup.study.importance.build())


def _readable_log_ticks(ax: Any) -> None:
    """Plain numbers on a log x axis: 1-2-5 ticks over a wide range, about 4 ticks over a narrow one."""
    from matplotlib import ticker

    if ax.get_xscale() != "log":
        return
    low, high = sorted(ax.get_xlim())
    wide = low > 0 and high / low >= 10
    ax.xaxis.set_major_locator(
        ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)) if wide else ticker.MaxNLocator(4)
    )
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def write_figures(setup: TuneSetup, study: Any, figures_dir: Path) -> list[Path]:
    """Importance, optimisation history, slice, intermediate values and timeline as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as oplt

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    target = f"val {setup.metric}"
    plots = {
        "history": lambda: oplt.plot_optimization_history(study, target_name=target),
        "slice": lambda: oplt.plot_slice(study, target_name=target),
        "intermediate": lambda: oplt.plot_intermediate_values(study),
        "timeline": lambda: oplt.plot_timeline(study),
    }
    if len(complete) >= 2:
        evaluator = setup.study.importance.build()
        plots = {"importance": lambda: oplt.plot_param_importances(study, evaluator=evaluator, target_name=target),
                 **plots}  # fmt: skip
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = plot()
        every = list(axes.flat) if hasattr(axes, "flat") else [axes]
        for ax in every:
            _readable_log_ticks(ax)
        figure = every[0].figure
        if name == "importance":
            evaluator_name = type(setup.study.importance.build()).__name__
            every[0].set_title(f"Hyperparameter importances ({evaluator_name})", loc="left")
        figure.set_size_inches(max(figure.get_size_inches()[0], 7.0), max(figure.get_size_inches()[1], 4.5))
        path = figures_dir / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def write_summary(
    setup: TuneSetup, study: Any, study_dir: Path, *, storage_url: str, figures: list[Path], seconds: float
) -> Path:
    """``summary.md``: best value and parameters, trial counts, importances, the trial table, the figures."""
    counts = study_counts(study)
    names = list(setup.study.space)
    lines = [f"# Study {setup.name}", ""]
    lines += [
        f"- Tune file: `{setup.source}`; storage: `{shown_url(storage_url)}`",
        f"- Objective: validation {setup.metric} (maximised; the test set is never looked at), loss "
        f"`{setup.template.loss.name}` on `{setup.template.dataset}`, embedding {setup.template.embedding_size}, "
        f"{setup.template.train.iterations} iterations per seed, seeds {setup.seeds}",
        f"- Sampler: TPE (multivariate={setup.study.sampler.multivariate}, constant_liar="
        f"{setup.study.sampler.constant_liar}, n_startup_trials={setup.study.sampler.n_startup_trials}, "
        f"seed={setup.study.sampler.seed} per worker and run); pruner: {setup.study.pruner.name}",
        "- Trials: "
        + ", ".join(f"{counts.get(s, 0)} {word}" for s, word in STATE_WORDS)
        + "".join(f", {counts[s]} {s}" for s in ("running", "waiting") if counts.get(s))
        + f" ({counts['total']} in all)",
        f"- Wall time of this run: {seconds:.0f} s; trial time summed over the study: "
        f"{sum((t.duration.total_seconds() for t in study.trials if t.duration), 0.0):.0f} s",
    ]
    try:
        best = study.best_trial
    except ValueError:
        best = None
    lines.append("")
    if best is None:
        lines.append("No trial completed yet, so there is no best trial and no best.yaml.")
    else:
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
        lines += [f"**Best**: trial {best.number}, val {setup.metric} = {best.value:.4f}; {params}.", "",
                  f"Re-run it over seeds {setup.study.best_seeds} on the test set: "
                  f"`python -m harness.run {study_dir / 'best.yaml'}`"]  # fmt: skip
    lines += ["", f"## Importance ({setup.study.importance.describe()})", ""]
    values = importances(setup, study)
    if values is None:
        lines.append("Needs at least 2 complete trials.")
    else:
        lines += ["| hyperparameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in values.items()]
    lines += ["", "## Trials", "", "| trial | state | value | " + " | ".join(names) + " | last step | seconds | note |",
              "|" + "---|" * (len(names) + 6)]  # fmt: skip
    retried = {n for t in study.trials for n in _retry_history(t)}
    for t in study.trials:
        note = ("surplus (not counted)" if t.user_attrs.get("surplus") else
                "stale, retried" if t.number in retried else t.user_attrs.get("fail_reason", ""))  # fmt: skip
        cells = [str(t.number), t.state.name.lower(), _fmt(t.value), *(_fmt(t.params.get(n)) for n in names),
                 _fmt(t.last_step), _fmt(t.duration.total_seconds() if t.duration else None), note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures]
    path = study_dir / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_outputs(
    setup: TuneSetup, study: Any, study_dir: Path, *, storage_url: str, seconds: float
) -> dict[str, Any]:
    """best.yaml, the figures and summary.md; returns what was written."""
    best = write_best(setup, study, study_dir)
    figures = write_figures(setup, study, study_dir / "figures")
    summary = write_summary(
        setup, study, study_dir, storage_url=storage_url, figures=figures, seconds=seconds
    )
    return {"best": best, "figures": figures, "summary": summary}


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.tune", description="Optuna study over one cell's loss hyperparameters."
    )
    parser.add_argument("file", help="tune file: an experiment YAML with a study: section")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna storage: an SQLAlchemy URL (postgresql://..., sqlite:///...) or journal:FILE "
                             "(default: sqlite:///<results>/<study>/study.db)")  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes sharing the study (default 1)"
    )
    parser.add_argument("--trials", type=int, default=None, metavar="N",
                        help="total trials the study should hold (default: study.trials of the file)")  # fmt: skip
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set train.iterations=100 (repeatable)")  # fmt: skip
    parser.add_argument("--results", default="results", help="results root folder (default: results)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _worker_command(args: argparse.Namespace, total: int, worker: int) -> list[str]:
    """The worker's command line; the storage URL travels in the environment (no password in ``ps``)."""
    command = [sys.executable, "-m", "harness.tune", args.file, "--trials", str(total), "--results", args.results,
               "--worker", str(worker)]  # fmt: skip
    for item in args.sets:
        command += ["--set", item]
    return command + (["--quiet"] if args.quiet else [])


def _spawn_workers(args: argparse.Namespace, storage_url: str, total: int) -> list[int]:
    """Run ``args.workers`` worker processes on the storage and wait; returns their exit codes."""
    env = {**os.environ, STORAGE_ENV: storage_url}
    if "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    processes = [subprocess.Popen(_worker_command(args, total, k), env=env) for k in range(args.workers)]
    try:
        return [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait()
        raise


@contextlib.contextmanager
def _optuna_logging(quiet: bool) -> Iterator[None]:
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.tune``."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected a positive number of processes")
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: expected the total number of trials, at least 1")
    setup = load_tune(args.file, args.sets)
    total = args.trials or setup.study.trials
    study_dir = Path(args.results) / setup.name
    study_dir.mkdir(parents=True, exist_ok=True)
    from_parent = os.environ.get(STORAGE_ENV) if args.worker is not None else None
    storage_url = args.storage or from_parent or default_storage(study_dir)
    storage = open_storage(storage_url, setup.study.heartbeat)
    with _optuna_logging(args.quiet):
        if args.worker is not None:
            run_worker(setup, storage, study_dir, total, worker=args.worker, progress=not args.quiet)
            return 0
        return _run_study(args, setup, storage, storage_url, study_dir, total)


def _run_study(args: argparse.Namespace, setup: TuneSetup, storage: Any, storage_url: str, study_dir: Path,
               total: int) -> int:  # fmt: skip
    """The parent: check the data, prepare the study, run the workers, write the outputs."""
    import optuna

    from harness.train import load_splits

    started = time.perf_counter()
    load_splits(setup.template)  # a missing dataset stops here with one line, before any trial
    study = open_study(setup, storage, setup.study.sampler.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    resolved = {**setup.experiment.model_dump(mode="json"), "study": setup.study.resolved()}
    atomic_write_text(study_dir / "tune.yaml", yaml.safe_dump(resolved, sort_keys=False))
    counts = study_counts(study)
    log = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    log(f"study {setup.name} on {shown_url(storage_url)}: {counts['total']} of {total} trials there; "
        f"{args.workers} worker(s)")  # fmt: skip
    codes = [0]
    if study_is_full(study, total):
        log(f"study {setup.name} already holds {total} trials; raise --trials to run more")
    elif args.workers == 1:
        run_worker(setup, storage, study_dir, total, worker=0, progress=not args.quiet)
    else:
        codes = _spawn_workers(args, storage_url, total)
    study = optuna.load_study(study_name=setup.name, storage=storage)
    outputs = write_outputs(
        setup, study, study_dir, storage_url=storage_url, seconds=time.perf_counter() - started
    )
    counts = study_counts(study)
    print(f"{setup.name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
          f"{counts.get('fail', 0)} failed of {total}; summary: {outputs['summary']}"
          + (f"; best: {outputs['best']}" if outputs["best"] else ""), file=sys.stderr)  # fmt: skip
    bad = [(k, c) for k, c in enumerate(codes) if c != 0]
    for worker, code in bad:
        print(f"worker {worker} exited with code {code}", file=sys.stderr)
    if not bad:
        return 0
    return 2 if any(code == 2 for _, code in bad) else EXIT_FAILED_WORKER


if __name__ == "__main__":
    cli_main(main)
