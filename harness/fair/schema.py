"""The fair file: an experiment plus a ``fair:`` section, turned into one tune setup per loss of the grid."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config import (
    NOT_TRAINING,
    CellConfig,
    Experiment,
    LossSpec,
    expand_cells,
    load_raw,
    set_dotted,
    validate_experiment,
    validation_message,
)
from harness.errors import UserError
from harness.results import loss_label
from harness.tune.schema import (
    HeartbeatConfig,
    ImportanceConfig,
    PrunerConfig,
    Range,
    SamplerConfig,
    TuneSetup,
    pop_section,
    validate_tune,
)


def _default_importance() -> ImportanceConfig:
    return ImportanceConfig(evaluator="ped_anova")


class FairConfig(BaseModel):
    """The ``fair:`` section: one budget, sampler and pruner for every loss's study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int = Field(ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # seeds each trial trains
    # K >= 2: class-disjoint K-fold cross-validation inside the training classes (the Reality Check's
    # protocol): each seed of a trial trains K cells, fold i validating (data.val_fold i of data.val_folds K)
    # and the other folds training; the objective is the mean over seeds and folds. 0: off.
    folds: int = Field(0, ge=0)
    trial_set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides for the trials' protocol
    sampler: SamplerConfig
    pruner: PrunerConfig
    importance: ImportanceConfig = Field(default_factory=_default_importance)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    # true: each study's first trial trains the loss's default values (never pruned, counted in trials)
    default_first: bool = True
    # with a trial_set that changes what a cell trains: the best N complete trials of each study (and the
    # defaults) are re-scored on the re-runs' protocol, on validation, before the tuned values are chosen
    rescore: int = Field(3, ge=1)
    # the budget converged for a loss when the last third of its trials raised its best validation value
    # by at most this many points (of the metric, in percent)
    converged_within: float = Field(1.0, ge=0)
    # study key -> a space replacing the one the loss declares
    spaces: dict[str, dict[str, Range]] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds


class _FairSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fair: FairConfig


def study_key(spec: LossSpec) -> str:
    """The short name of a grid loss's study: its label, else its name and preset (file-name safe)."""
    key = spec.label or (spec.name + (f"-{spec.preset}" if spec.preset else ""))
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key).strip("_.-") or spec.name


@dataclass(frozen=True)
class LossStudy:
    """One loss of the grid: its position, its spec, its study key, the tune setup of its study and (when
    the trials train a shorter protocol) the same study on the re-runs' protocol, for re-scoring."""

    index: int
    spec: LossSpec
    key: str
    setup: TuneSetup
    full: TuneSetup | None = None

    @property
    def label(self) -> str:
        """The loss's name in the reports: its label, else the paper's row label of the loss."""
        return self.spec.label or loss_label(self.spec.name)

    @property
    def name(self) -> str:
        return self.setup.name


@dataclass(frozen=True)
class FairSetup:
    """A validated fair file: the experiment (its grid is what the re-runs train) and a study per loss."""

    source: str
    experiment: Experiment
    fair: FairConfig
    studies: list[LossStudy]
    # the settings in which the trials' protocol differs from the re-runs' ("train.iterations 300 (re-runs
    # 800)"); empty when the trials train what the re-runs train
    protocol_changes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def labels(self) -> dict[str, str]:
        """Study key -> the loss's name in the reports (the paper's label; the key where two share one)."""
        labels = [s.label for s in self.studies]
        return {s.key: s.label if labels.count(s.label) == 1 else s.key for s in self.studies}

    def folder(self, results: str | Path) -> Path:
        """Where the fair run lives: ``<results>/<name>/``."""
        return Path(results) / self.name


def _one_of_each(experiment: Experiment, source: str) -> None:
    """The studies tune one block: a single dataset, embedding size and variant."""
    g = experiment.grid
    sizes = g.sizes_for(g.datasets[0]) if len(g.datasets) == 1 else []
    if len(g.datasets) != 1 or len(sizes) != 1 or len(g.variants) != 1:
        raise UserError(
            f"{source}: grid: a fair file compares losses within one block, got datasets {g.datasets}, "
            f"sizes {g.embedding_sizes}, variants {list(g.variants)}; keep one of each "
            "(one fair file per dataset and size)"
        )
    if len(g.seeds) < 2:
        raise UserError(
            f"{source}: grid.seeds: the tuned and default losses are compared over seeds, got "
            f"{g.seeds}; give at least 2 seeds"
        )


def _study_raw(
    base: dict[str, Any], fair: FairConfig, loss_raw: Any, name: str, key: str, *, trial_set: bool = True
) -> dict[str, Any]:
    """The tune mapping of one loss's study: the grid narrowed to that loss and the trial seed, on the
    trials' protocol (``trial_set``) or on the re-runs' one."""
    raw = copy.deepcopy(base)
    for dotted, value in fair.trial_set.items() if trial_set else ():
        set_dotted(raw, dotted, copy.deepcopy(value), where="fair.trial_set")
    raw["grid"]["losses"] = [copy.deepcopy(loss_raw)]
    raw["grid"]["seeds"] = [fair.seeds[0]]
    study: dict[str, Any] = {
        "name": name,
        "trials": fair.trials,
        "seeds": list(fair.seeds),
        "folds": fair.folds,
        "sampler": fair.sampler.model_dump(),
        "pruner": fair.pruner.resolved(),
        "importance": fair.importance.resolved(),
        "heartbeat": fair.heartbeat.model_dump(),
        "best_seeds": list(base["grid"]["seeds"]),
        "default_first": fair.default_first,
    }
    if key in fair.spaces:
        study["space"] = {param: bounds.model_dump() for param, bounds in fair.spaces[key].items()}
    raw["study"] = study
    return raw


def validate_fair(raw: dict[str, Any], source: str) -> FairSetup:
    """Validate a raw fair mapping (an experiment plus ``fair:``); every mistake is one line."""
    raw, section = pop_section(raw, "fair", source, "fair")
    try:
        fair = _FairSection.model_validate(section).fair
    except ValidationError as err:
        raise UserError(validation_message(source, err)) from None
    experiment = validate_experiment(raw, source)
    _one_of_each(experiment, source)
    keys = [study_key(spec) for spec in experiment.grid.losses]
    if len(set(keys)) != len(keys):
        raise UserError(f"{source}: grid.losses: two losses share a study name ({keys}); give them labels")
    unknown = sorted(set(fair.spaces) - set(keys))
    if unknown:
        raise UserError(
            f"{source}: fair.spaces: {unknown} name no loss of the grid; the study names are {keys}"
        )
    studies = []
    changes: list[str] = []
    grid_cells = expand_cells(experiment)
    for index, (spec, key) in enumerate(zip(experiment.grid.losses, keys, strict=True)):
        name, where = f"{experiment.name}-{key}", f"{source} (study of {key})"
        study_raw = _study_raw(raw, fair, raw["grid"]["losses"][index], name, key)
        setup = validate_tune(study_raw, where, space_key=f"fair.spaces.{key}")
        _check_pruner(setup, fair, source)
        rerun_cell = next(cell for cell in grid_cells if cell.loss == spec)
        changes = changes or protocol_changes(setup.template, rerun_cell)
        full = None
        if changes:
            full_raw = _study_raw(raw, fair, raw["grid"]["losses"][index], name, key, trial_set=False)
            full_raw["study"]["pruner"] = {"name": "none"}  # a re-score trains every candidate to the end
            full = validate_tune(full_raw, where, space_key=f"fair.spaces.{key}")
        studies.append(LossStudy(index, spec, key, setup, full))
    return FairSetup(source, experiment, fair, studies, changes)


# What a trial may set without changing what its cells train: which metrics it evaluates, how often it logs.
_NOT_PROTOCOL = {"experiment", "seed", "loss", "evaluate", "tracking"}
_NOT_PROTOCOL_TRAIN = {"log_every", "threads"}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}{key}." if isinstance(item, dict) else f"{prefix}{key}"))
    return out


def protocol_changes(trial: CellConfig, rerun: CellConfig) -> list[str]:
    """The settings in which a trial's cell trains differently from a re-run's cell (``"train.iterations 300
    (re-runs 800)"``): everything but the loss, the seed, the evaluated metrics, logging and where the data
    lie."""

    def protocol(cell: CellConfig) -> dict[str, Any]:
        dump = cell.model_dump(mode="json", exclude=NOT_TRAINING)
        for key in _NOT_PROTOCOL:
            dump.pop(key, None)
        for key in _NOT_PROTOCOL_TRAIN:
            dump["train"].pop(key, None)
        return _flat(dump)

    a, b = protocol(trial), protocol(rerun)
    return [
        f"{key} {a.get(key)} (re-runs {b.get(key)})"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def _check_pruner(setup: TuneSetup, fair: FairConfig, source: str) -> None:
    """Hyperband judges trials up to their full length, at the trials' evaluation points."""
    pruner = fair.pruner
    if pruner.name == "none":
        return
    every = setup.template.train.eval_every
    if pruner.min_resource is not None and pruner.min_resource % every:
        raise UserError(
            f"{source}: fair.pruner.min_resource: {pruner.min_resource} is not an evaluation point of the "
            f"trials (every {every} iterations); use a multiple of {every}"
        )
    if pruner.name == "hyperband" and pruner.max_resource not in ("auto", setup.steps):
        raise UserError(
            f"{source}: fair.pruner.max_resource: {pruner.max_resource}, but a trial trains {setup.steps} "
            f"iterations ({len(setup.runs)} run(s) of {setup.template.train.iterations}); set it to "
            f"{setup.steps} so the brackets end at the full length"
        )


def load_fair(path: str | Path, sets: list[str] | None = None) -> FairSetup:
    """Read a fair file (with its ``base:`` files and ``--set`` overrides) and validate it."""
    return validate_fair(load_raw(path, sets), str(path))
