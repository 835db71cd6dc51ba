"""The tune file: its ``study:`` schema, the checks on its one-cell template, and the best.yaml it leads
to."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.config import (
    CellConfig,
    Experiment,
    FolderName,
    LossSpec,
    expand_cells,
    load_raw,
    set_dotted,
    validate_experiment,
    validation_message,
)
from harness.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from optuna.importance import BaseImportanceEvaluator
    from optuna.pruners import BasePruner


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # no coercion: see harness.config

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
            raise ValueError(
                f"{cls.WHAT} {kind!r} needs {', '.join(missing)} written out (it takes {', '.join(own)})"
            )
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

    def build(self) -> BasePruner:
        """The Optuna pruner."""
        from optuna import pruners

        kinds: dict[str, type[BasePruner]] = {
            "hyperband": pruners.HyperbandPruner,
            "successive_halving": pruners.SuccessiveHalvingPruner,
        }
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
                raise ValueError(
                    "evaluator 'fanova' needs scikit-learn, which the harness does not install; "
                    "use 'ped_anova'"
                ) from None
        return self

    def build(self) -> BaseImportanceEvaluator:
        """The Optuna importance evaluator."""
        from optuna import importance

        kinds: dict[str, type[BaseImportanceEvaluator]] = {
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

    name: FolderName | None = None
    trials: int = Field(ge=1)
    space: dict[str, Range] = Field(default_factory=dict)  # empty: the space the loss declares
    sampler: SamplerConfig
    pruner: PrunerConfig
    importance: ImportanceConfig
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    folds: int = Field(0, ge=0)  # K >= 2: each seed trains K class folds (data.val_fold 0..K-1); 0: off
    best_seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    best_set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides for best.yaml's protocol
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    # true: the study's first trial trains the loss's default values (enqueued when the study is created,
    # counted, never pruned), so the best trial is never worse than the defaults on the study's objective
    default_first: bool = False

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

    @field_validator("folds")
    @classmethod
    def _not_one_fold(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("1 fold would leave no training classes; use 0 (off) or at least 2")
        return folds


class _TuneSection(_Strict):
    study: StudyConfig


@dataclass(frozen=True)
class TuneSetup:
    """A validated tune file: the experiment, its one cell (the trial template) and the study settings."""

    source: str
    experiment: Experiment
    template: CellConfig
    study: StudyConfig
    # the loss's default value of each searched hyperparameter (the template's resolved loss)
    default_params: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.study.name or self.experiment.name

    @property
    def first_params(self) -> dict[str, float] | None:
        """The parameters of the trial enqueued first (``study.default_first``: the defaults), else None."""
        return dict(self.default_params) if self.study.default_first else None

    @property
    def seeds(self) -> list[int]:
        return list(self.study.seeds or [self.template.seed])

    @property
    def runs(self) -> list[tuple[int, int | None]]:
        """What a trial trains, in order: each seed and, with ``study.folds``, each class fold (None: off)."""
        folds: list[int | None] = list(range(self.study.folds)) or [None]
        return [(seed, fold) for seed in self.seeds for fold in folds]

    def run_folder(self, seed: int, fold: int | None) -> str:
        """A run's subfolder in its trial's folder: '' when a trial is one run, else ``s<seed>``, ``f<fold>``
        or ``s<seed>-f<fold>``."""
        parts = [f"s{seed}"] * (len(self.seeds) > 1) + [f"f{fold}"] * (fold is not None)
        return "-".join(parts)

    @property
    def metric(self) -> str:
        return self.template.train.select_metric

    @property
    def steps(self) -> int:
        """Report steps of a whole trial: the training iterations of every run (seed, fold), back to back."""
        return self.template.train.iterations * len(self.runs)


def _loss_parameters(name: str) -> list[str]:
    """The numeric hyperparameters the loss's factory accepts (not ``preset``, not switches)."""
    import losses

    params = inspect.signature(losses.info(name).factory).parameters.values()
    return [p.name for p in params if p.name != "preset" and "bool" not in str(p.annotation)]


def declared_space(loss: str) -> dict[str, Range]:
    """The search space the loss library declares for ``loss`` (``losses.info(loss).search_space``)."""
    import losses

    return {p.name: Range(low=p.low, high=p.high, log=p.log) for p in losses.info(loss).search_space}


def _default_params(template: CellConfig, space: dict[str, Range]) -> dict[str, float]:
    """The template loss's resolved value of each searched name that has a numeric one."""
    hparams = template.loss.resolved()["hparams"]
    return {
        name: float(hparams[name])
        for name in space
        if isinstance(hparams.get(name), int | float) and not isinstance(hparams.get(name), bool)
    }


def _check_defaults(setup: TuneSetup, space_key: str) -> None:
    """With ``study.default_first``, every searched range holds the loss's default value."""
    if not setup.study.default_first:
        return
    for name, bounds in setup.study.space.items():
        where = f"{setup.source}: {space_key}.{name}"
        value = setup.default_params.get(name)
        if value is None:
            raise UserError(
                f"{where}: loss {setup.template.loss.name!r} has no numeric default for {name!r}, so the "
                "first trial cannot train the defaults; give it in the loss's hparams or set "
                "study.default_first: false"
            )
        if not bounds.low <= value <= bounds.high:
            raise UserError(
                f"{where}: the range [{bounds.low:g}, {bounds.high:g}] excludes the loss's default "
                f"{name}={value:g}, which the first trial trains; widen the range to include it"
            )


def _check_space(setup: TuneSetup, space_key: str = "study.space") -> None:
    """Every searched name is a hyperparameter of the loss, and the loss builds at both ends of its range."""
    spec = setup.template.loss
    accepted = _loss_parameters(spec.name)
    for name, bounds in setup.study.space.items():
        where = f"{setup.source}: {space_key}.{name}"
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
        raise UserError(
            f"{src}: train.select_on: a study optimises validation data only, got {train.select_on!r}; "
            "set train.select_on: val (the test set is for best.yaml's re-run)"
        )
    if setup.study.folds and setup.template.data.val_folds:
        raise UserError(
            f"{src}: study.folds: {setup.study.folds} class folds per seed, but data.val_folds already "
            "fixes one fold; remove data.val_folds (the study sets each fold)"
        )
    if setup.template.data.val_fraction <= 0 and not setup.study.folds:
        raise UserError(
            f"{src}: data.val_fraction: a study needs validation classes, got "
            f"{setup.template.data.val_fraction}; set it above 0, e.g. 0.2"
        )
    pruner = setup.study.pruner
    for key in ("min_resource", "max_resource"):
        value = getattr(pruner, key)
        if isinstance(value, int) and value > setup.steps:
            raise UserError(
                f"{src}: study.pruner.{key}: {value} is beyond the {setup.steps} iterations a trial "
                f"trains ({len(setup.runs)} run(s): seeds x folds x train.iterations); lower it"
            )


def pop_section(
    raw: dict[str, Any], key: str, source: str, kind: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``raw`` without its ``key:`` section, and ``{key: section}``; one line when a ``kind`` file has
    none."""
    raw = dict(raw)
    if key not in raw:
        raise UserError(
            f"{source}: no {key}: section; a {kind} file is an experiment file plus {key}: "
            f"(see experiments/{kind}-glyphs.yaml)"
        )
    return raw, {key: raw.pop(key)}


def validate_tune(raw: dict[str, Any], source: str, space_key: str = "study.space") -> TuneSetup:
    """Validate a raw tune mapping (an experiment plus ``study:``); every mistake is one line (a range
    mistake named under ``space_key``, the file's key for the space)."""
    raw, section = pop_section(raw, "study", source, "tune")
    experiment = validate_experiment(raw, source)
    try:
        study = _TuneSection.model_validate(section).study
    except ValidationError as err:
        raise UserError(validation_message(source, err)) from None
    cells = expand_cells(experiment)
    if len(cells) != 1:
        g = experiment.grid
        raise UserError(
            f"{source}: grid: a tune file needs exactly one cell "
            "(one loss, dataset, size, variant and seed), "
            f"got {len(cells)} (losses {[loss.name for loss in g.losses]}, datasets {g.datasets}, "
            f"sizes {g.embedding_sizes}, variants {list(g.variants)}, seeds {g.seeds}); narrow the grid"
        )
    if not study.space:  # no space written: the one the loss declares
        study = study.model_copy(update={"space": declared_space(cells[0].loss.name)})
    setup = TuneSetup(source, experiment, cells[0], study, _default_params(cells[0], study.space))
    _check_protocol(setup)
    _check_space(setup, space_key)
    _check_defaults(setup, space_key)
    lows = {name: bounds.low for name, bounds in study.space.items()}
    validate_experiment(best_experiment(setup, lows), f"{source} (best.yaml with study.best_set)")
    return setup


def load_tune(path: str | Path, sets: list[str] | None = None) -> TuneSetup:
    """Read a tune file (with its ``base:`` files and ``--set`` overrides) and validate it."""
    return validate_tune(load_raw(path, sets), str(path))


def best_experiment(setup: TuneSetup, best_params: dict[str, float]) -> dict[str, Any]:
    """An experiment mapping for ``harness.run``: the template's resolved protocol, the best hparams,
    several seeds."""
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
            "losses": [loss],
            "datasets": [t.dataset],
            "embedding_sizes": [t.embedding_size],
            "seeds": list(setup.study.best_seeds),
            "variants": {t.variant: {}},
        },
    }
    for key, value in setup.study.best_set.items():
        set_dotted(doc, key, copy.deepcopy(value), where=f"{setup.source}: study.best_set")
    return doc
