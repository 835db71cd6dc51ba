"""The fair file: an experiment plus a ``fair:`` section, turned into one tune setup per loss of the grid."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config import Experiment, LossSpec, load_raw, set_dotted, validate_experiment, validation_message
from harness.errors import UserError
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
    """One loss of the grid: its position, its spec, its study key and the tune setup of its study."""

    index: int
    spec: LossSpec
    key: str
    setup: TuneSetup

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

    @property
    def name(self) -> str:
        return self.experiment.name

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


def _study_raw(base: dict[str, Any], fair: FairConfig, loss_raw: Any, name: str, key: str) -> dict[str, Any]:
    """The tune mapping of one loss's study: the grid narrowed to that loss and the trial seed."""
    raw = copy.deepcopy(base)
    for dotted, value in fair.trial_set.items():
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
    for index, (spec, key) in enumerate(zip(experiment.grid.losses, keys, strict=True)):
        study_raw = _study_raw(raw, fair, raw["grid"]["losses"][index], f"{experiment.name}-{key}", key)
        setup = validate_tune(study_raw, f"{source} (study of {key})", space_key=f"fair.spaces.{key}")
        studies.append(LossStudy(index, spec, key, setup))
    return FairSetup(source, experiment, fair, studies)


def load_fair(path: str | Path, sets: list[str] | None = None) -> FairSetup:
    """Read a fair file (with its ``base:`` files and ``--set`` overrides) and validate it."""
    return validate_fair(load_raw(path, sets), str(path))
