"""The typed experiment schema (strict pydantic models) and the stable id of a resolved grid cell."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    StrictFloat,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.config.cluster import ClusterConfig
from harness.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from losses import GPWLoss


def _check_known(kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Raise ValueError (turned into the one-line UserError with its YAML path) for a name not in
    ``known``."""
    choices = list(known)
    for name in names:
        if name not in choices:
            raise ValueError(f"unknown {kind} {name!r}{did_you_mean(str(name), choices)}")


def _known_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``name`` when it is one of ``known``; otherwise the ValueError of :func:`_check_known`."""
    _check_known(kind, [name], known)
    return name


def _check_unique(axis: str, entries: list[Any]) -> None:
    """Raise ValueError when a grid axis lists the same entry twice (it would train the same cells twice)."""
    seen: list[Any] = []
    for entry in entries:
        if entry in seen:
            shown = entry.model_dump(exclude_defaults=True) if isinstance(entry, BaseModel) else entry
            raise ValueError(f"{axis} lists {shown!r} twice; each entry of a grid axis must be different")
        seen.append(entry)


def _check_datasets(names: Iterable[str]) -> None:
    from harness.data import DATASETS  # the names are declared there; imported lazily to keep config light

    _check_known("dataset", names, DATASETS)


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
RESERVED_NAMES = {
    "reference": "results/reference/ holds the committed reference runs",
    "paper": "results/paper/ is the paper tables' folder (its README says where they are now)",
}
"""Names an experiment or a study may not take: folders of the results root the harness owns."""


def _no_dots(name: str) -> str:
    """``name`` unless it holds ``..`` (after :data:`NAME_PATTERN`)."""
    if ".." in name:
        raise ValueError(f"{name!r}: '..' has no place in a name that becomes a folder; choose another name")
    return name


def _unreserved(name: str) -> str:
    """``name`` unless it is one of :data:`RESERVED_NAMES`."""
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved ({RESERVED_NAMES[name.lower()]}); choose another name")
    return name


SafeName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100), AfterValidator(_no_dots)]
"""A name that becomes part of a path or a cell id (a variant): ASCII letters, digits, ``_``, ``.``, ``-``, at
most 100 characters, starting with a letter or digit, no ``..``."""
FolderName = Annotated[SafeName, AfterValidator(_unreserved)]
"""A :data:`SafeName` that names a folder of the results root (an experiment, a study): not reserved."""


class _Strict(BaseModel):
    """No unknown field, and no coercion: a number must be a number (never a boolean or a quoted string), a
    switch a boolean (never 1 or 'yes'); an int is accepted where a float is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


NON_NEGATIVE_HPARAMS = {
    "lam": "lambda, the similarity threshold or margin",
    "eps": "epsilon, the mining margin",
}
"""Loss hyperparameters that are distances or margins: a negative value is a mistake, not a setting."""


class LossSpec(_Strict):
    """One loss of the grid: registry name, optional preset, hyperparameters, label
    (default: the registry's)."""

    name: str
    preset: str | None = None
    hparams: dict[str, float | int | bool | str] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _buildable(self) -> LossSpec:
        import losses

        names = losses.available()
        if self.name not in names:
            raise ValueError(f"unknown loss {self.name!r}{did_you_mean(self.name, names)}")
        try:
            loss = self._build_unchecked()
        except (TypeError, ValueError) as err:  # losses.LossConfigError is a ValueError
            raise ValueError(self._rejected(err)) from None
        for key, meaning in NON_NEGATIVE_HPARAMS.items():
            value = loss.hparams.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"loss {self.name!r}: {key} ({meaning}) must be >= 0, got {value!r}")
        return self

    def _rejected(self, err: Exception) -> str:
        return f"loss {self.name!r} rejects its settings: {err}"

    def _build_unchecked(self) -> GPWLoss:
        import losses

        kwargs = dict(self.hparams)
        if self.preset is not None:
            kwargs["preset"] = self.preset
        return losses.build(self.name, **kwargs)

    def _build_checked(self) -> GPWLoss:
        import losses

        try:
            return self._build_unchecked()
        except losses.LossConfigError as err:
            raise UserError(self._rejected(err)) from None

    def build(self) -> GPWLoss:
        """Instantiate the loss module this spec describes; a setting the loss rejects is a UserError."""
        return self._build_checked()

    def resolved(self) -> dict[str, Any]:
        """``{"name", "preset", "hparams"}`` with every parameter of the loss's factory resolved.

        The values come from the preset (the factory's default preset when the spec names none), the
        spec's explicit ``hparams`` and the factory's own defaults: what the built loss really uses.
        """
        hparams = dict(self._build_checked().hparams)
        return {"name": self.name, "preset": hparams.pop("preset", None), "hparams": hparams}


class DataConfig(_Strict):
    """Where the data is and how batches are drawn."""

    root: str | None = None
    cache_dir: str | None = None
    # Official benchmarks: read images from a pre-decoded uint8 cache (docs/data.md); "fast": training
    # crops resampled by torch's uint8 kernel (box corner on the cached pixel grid) instead of PIL.
    decoded_cache: bool | Literal["fast"] = False
    image_size: int = Field(224, ge=8)
    crop_scale: tuple[StrictFloat, StrictFloat] = Field((0.08, 1.0), strict=False)  # a YAML list is fine
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    val_seed: int = 0
    # Class-disjoint k-fold cross-validation: val_folds K >= 2 cuts the training classes into K disjoint
    # folds (drawn with val_seed) and fold val_fold is the validation set; 0 = off (val_fraction draws it).
    val_folds: int = Field(0, ge=0)
    val_fold: int = Field(0, ge=0)
    classes_per_batch: int = Field(16, ge=2)
    samples_per_class: int = Field(5, ge=2)
    workers: int = Field(4, ge=0)
    strict_counts: bool = True
    sampler: str = "proportional"  # a key of harness.data.SAMPLERS
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments for the dataset builder

    @field_validator("crop_scale")
    @classmethod
    def _crop_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        low, high = scale
        if not 0 < low <= high <= 1:
            raise ValueError(
                "expected [smallest, largest] fractions of the image area a training crop covers, with "
                "0 < smallest <= largest <= 1, e.g. [0.08, 1.0]"
            )
        return scale

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        from harness.data import SAMPLERS

        return _known_name("sampler", name, SAMPLERS)

    @model_validator(mode="after")
    def _folds_consistent(self) -> DataConfig:
        folds, fold = self.val_folds, self.val_fold
        if folds == 1:
            raise ValueError("val_folds: 1 fold would leave no training classes; use 0 (off) or at least 2")
        if not folds and fold:
            raise ValueError(
                f"val_fold: {fold} needs data.val_folds (class folds are off); set val_folds or "
                "remove val_fold"
            )
        if folds and fold >= folds:
            raise ValueError(f"val_fold: {fold} is not a fold of val_folds {folds}; use 0 to {folds - 1}")
        if folds and abs(self.val_fraction - 1 / folds) > 0.005:
            raise ValueError(
                f"val_fraction: {self.val_fraction} but val_folds {folds} holds out 1/{folds} of the "
                f"training classes; set data.val_fraction: {round(1 / folds, 2)}"
            )
        return self

    @model_serializer(mode="wrap")
    def _folds_only_when_on(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without class folds the dump omits val_folds and val_fold: config.json, cell ids and study
        fingerprints stay as they were before the fold settings existed."""
        dumped = handler(self)
        if not self.val_folds:
            dumped.pop("val_folds", None)
            dumped.pop("val_fold", None)
        if not self.decoded_cache:  # likewise: cells without the cache keep their ids
            dumped.pop("decoded_cache", None)
        return dumped


class ModelConfig(_Strict):
    """Backbone and embedding head."""

    backbone: str = "bninception"
    pretrained: bool = True
    weights: str | None = None
    pooling: Literal["max", "avg", "token"] = "max"  # token: a timm ViT's class token
    freeze_bn: bool = True
    width: int = Field(32, ge=1)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from harness.models import check_backbone

        return check_backbone(name)

    @model_validator(mode="after")
    def _weights_used(self) -> ModelConfig:
        if self.weights is not None and self.backbone == "small_cnn":
            raise ValueError(
                "weights: small_cnn trains from scratch and would ignore model.weights; remove it"
            )
        if self.pooling == "token" and not self.backbone.startswith("timm:"):
            raise ValueError(
                f"pooling: 'token' (a ViT's class token) needs a timm backbone; {self.backbone!r} pools "
                "with 'max' or 'avg'"
            )
        if self.weights is not None and not self.pretrained:
            raise ValueError(
                "weights: model.pretrained is false, so model.weights would be ignored; "
                "set model.pretrained: true or remove model.weights"
            )
        return self


class OptimConfig(_Strict):
    """Optimiser with separate learning rates for backbone and head."""

    name: str = "adam"  # a key of harness.optimizers.OPTIMIZERS
    lr_backbone: float = Field(3e-5, gt=0)
    lr_head: float = Field(3e-5, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0)

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from harness.optimizers import OPTIMIZERS  # lazily: the factories import torch

        return OPTIMIZERS.check(name)


MOMENTUM_OPTIMIZERS = ("sgd",)
"""The optimisers that use ``optim.momentum``: another value than its default with any other is refused."""


class ScheduleConfig(_Strict):
    """Step schedule: multiply the learning rates by ``gamma`` at each milestone iteration."""

    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)


class TrainConfig(_Strict):
    """The training protocol of one cell."""

    iterations: int = Field(3000, ge=1)
    eval_every: int = Field(200, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    # The reported "selected" weights: best on the validation classes (val), the final weights with no
    # selection (final: needs no validation split), or best on the test set (test: an explicit opt-in,
    # optimistic, as the official code selects; the report labels it).
    select_on: Literal["val", "final", "test"] = "val"
    select_metric: str = "recall@1"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    deterministic: bool = True
    keep_weights: bool = False
    threads: int | None = Field(None, ge=1)  # CPU threads for torch (null: torch's default)
    pair_weight_batches: int = Field(1, ge=0)


class EvalConfig(_Strict):
    """What is measured at each evaluation."""

    metrics: list[str] = Field(default_factory=lambda: ["recall", "map_at_r", "r_precision"])
    ks: list[int] | None = None
    batch_size: int = Field(256, ge=1)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from harness.evaluate import METRICS

        _check_known("metric", names, METRICS)
        return names

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int] | None) -> list[int] | None:
        if ks is not None and (not ks or min(ks) < 1):
            raise ValueError("K values must be a non-empty list of integers >= 1")
        listed = ks or []
        repeated = sorted({k for k in listed if listed.count(k) > 1})
        if repeated:
            raise ValueError(f"K {repeated[0]} is listed twice; list each K once")
        return ks


class TrackingConfig(_Strict):
    """Live logging of each cell's training (see :mod:`harness.tracking`); never part of a cell's identity."""

    loggers: list[str] = Field(default_factory=lambda: ["tensorboard"])  # keys of harness.tracking.LOGGERS
    # MLflow's tracking URI; null: $MLFLOW_TRACKING_URI, else a SQLite store in <results>/<experiment>/mlruns/
    mlflow_uri: str | None = None

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, names: list[str]) -> list[str]:
        from harness.tracking import LOGGERS

        _check_known("logger", names, LOGGERS)
        _check_unique("loggers", names)
        return names


class ProtocolConfig(_Strict):
    """Every setting of a cell except the grid axes."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


CELL_AXES = ("experiment", "dataset", "embedding_size", "seed", "variant")
"""The fields of a cell that the grid sets (the experiment's name and the axes): no override may set them."""
LOSS_OVERRIDES = ("loss.preset", "loss.hparams")
"""What of a cell's loss a variant or dataset override may change (the loss itself is a grid axis)."""


def _check_layer(where: str, layer: dict[str, Any]) -> None:
    """Raise ValueError when a variant's or dataset's overrides set a grid axis (every cell would collide)."""
    for key in layer:
        head = str(key).split(".")[0]
        allowed = any(str(key) == k or str(key).startswith(k + ".") for k in LOSS_OVERRIDES)
        if head in (*CELL_AXES, "name", "description", "grid", "dataset_overrides") or (
            head == "loss" and not allowed
        ):
            raise ValueError(
                f"{where} overrides {key!r}, which the grid sets (its axes: grid.losses, datasets, "
                "embedding_sizes, variants, seeds, and the name); change the grid instead (a loss's "
                f"{' and '.join(LOSS_OVERRIDES)} may be overridden)"
            )


def _check_in_grid(per_dataset: dict[str, Any], datasets: list[str] | None) -> None:
    """Raise ValueError for a per-dataset entry naming a dataset the grid does not train (forgotten edit)."""
    if datasets is None:  # the datasets were refused already
        return
    for name in per_dataset:
        if name not in datasets:
            raise ValueError(
                f"{name!r} is not in grid.datasets {datasets}, so these settings would never be used; "
                "remove them or add the dataset to grid.datasets"
            )


def _check_distinct_losses(specs: list[LossSpec]) -> None:
    """Raise ValueError for two entries that train the same loss, or two losses one report row would pool."""
    import losses

    seen: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for index, spec in enumerate(specs):
        resolved = spec.resolved()
        row = (spec.label,) if spec.label else (losses.info(spec.name).label, spec.name, spec.preset or "")
        for other, (other_resolved, other_row) in enumerate(seen):
            if resolved == other_resolved:
                raise ValueError(
                    f"[{index}] trains the same loss as [{other}] (both resolve to {resolved['name']} "
                    f"{resolved['preset'] or ''} {resolved['hparams']}); keep one"
                )
            explicit = spec.label or specs[other].label
            if row[0] == other_row[0] and (explicit or row == other_row):
                raise ValueError(
                    f"[{index}] and [{other}] are different losses reported under one label "
                    f"{row[0]!r}; give each its own label"
                )
        seen.append((resolved, row))


class Grid(_Strict):
    """The axes of an experiment; every combination is one cell."""

    losses: list[LossSpec] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)
    embedding_sizes: list[int] | dict[str, list[int]] = Field(default_factory=lambda: [512])
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    variants: dict[SafeName, dict[str, Any]] = Field(default_factory=lambda: {"default": dict[str, Any]()})

    @field_validator("losses", "seeds")
    @classmethod
    def _no_repeats(cls, entries: list[Any], info: ValidationInfo) -> list[Any]:
        _check_unique(str(info.field_name), entries)
        return entries

    @field_validator("losses")
    @classmethod
    def _distinct_losses(cls, specs: list[LossSpec]) -> list[LossSpec]:
        _check_distinct_losses(specs)
        return specs

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, names: list[str]) -> list[str]:
        _check_datasets(names)
        _check_unique("datasets", names)
        return names

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        seen: dict[str, str] = {}
        for name, overrides in variants.items():
            _check_layer(f"variant {name!r}", overrides)
            key = repr(sorted(overrides.items()))
            if key in seen:
                raise ValueError(
                    f"variants {seen[key]!r} and {name!r} have the same overrides ({overrides}), so they "
                    "would train the same cells twice; remove one or make them differ"
                )
            seen[key] = name
        return variants

    @field_validator("embedding_sizes")
    @classmethod
    def _positive_sizes(
        cls, sizes: list[int] | dict[str, list[int]], info: ValidationInfo
    ) -> list[int] | dict[str, list[int]]:
        if isinstance(sizes, dict):
            _check_in_grid(sizes, info.data.get("datasets"))
        for group in sizes.values() if isinstance(sizes, dict) else [sizes]:
            if not group or min(group) < 1:
                raise ValueError("embedding sizes must be a non-empty list of integers >= 1")
            _check_unique("embedding_sizes", group)
        return sizes

    @model_validator(mode="after")
    def _sizes_per_dataset(self) -> Grid:
        if isinstance(self.embedding_sizes, dict):
            for name in self.datasets:
                if name not in self.embedding_sizes:
                    raise ValueError(
                        f"embedding_sizes: no sizes for dataset {name!r}; give a list for each dataset"
                    )
        return self

    def sizes_for(self, dataset: str) -> list[int]:
        """The embedding sizes of one dataset."""
        sizes = self.embedding_sizes
        return sizes[dataset] if isinstance(sizes, dict) else sizes


class Experiment(ProtocolConfig):
    """A whole experiment file."""

    name: FolderName
    description: str = ""
    grid: Grid
    dataset_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)  # Slurm jobs; not part of any cell
    imports: list[str] = Field(default_factory=list)  # plugin modules, imported before validation

    @field_validator("dataset_overrides")
    @classmethod
    def _known_override_datasets(
        cls, overrides: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        _check_datasets(overrides)
        grid = info.data.get("grid")
        _check_in_grid(overrides, grid.datasets if grid is not None else None)
        for dataset, layer in overrides.items():
            _check_layer(f"the entry {dataset!r}", layer)
        return overrides


def _without_empty(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` without the sections left empty (a section whose only differences were excluded)."""
    kept = {key: _without_empty(value) if isinstance(value, dict) else value for key, value in tree.items()}
    return {key: value for key, value in kept.items() if value != {}}


NOT_TRAINING: dict[str, bool | set[str]] = {
    "experiment": True,
    "data": {"root", "cache_dir", "workers"},
    "tracking": True,
}
"""Fields of a cell's config that do not change what it trains (where the data lies, its folder, where its
training is logged live): left out of its identity (the cell id, a tuning study's fingerprint)."""

# Enters every cell id: bump it when the meaning of an existing schema default changes
# (see CellConfig.cell_id).
CELL_ID_VERSION = 1


class CellConfig(ProtocolConfig):
    """One resolved grid cell: the protocol after variant and dataset overrides, plus the axes."""

    not_training: ClassVar[dict[str, Any]] = NOT_TRAINING  # for readers that must not import config

    experiment: str
    loss: LossSpec
    dataset: str
    embedding_size: int
    seed: int
    variant: str = "default"

    @model_validator(mode="after")
    def _protocol_takes_effect(self) -> CellConfig:
        """Settings that together would do nothing, or not what they say: refused instead of run."""
        iterations, milestones = self.train.iterations, self.schedule.milestones
        for index, milestone in enumerate(milestones):
            if not 1 <= milestone < iterations:
                raise ValueError(
                    f"schedule.milestones: {milestone} would never change the learning rate "
                    f"(train.iterations is {iterations}); each milestone must lie in 1 .. {iterations - 1} "
                    "(for a shorter run, set schedule.milestones too, e.g. --set schedule.milestones=[])"
                )
            if index and milestone <= milestones[index - 1]:
                raise ValueError(
                    f"schedule.milestones: {milestones} must be strictly increasing; sort them, each once"
                )
        momentum = OptimConfig.model_fields["momentum"].default
        if self.optim.momentum != momentum and self.optim.name not in MOMENTUM_OPTIMIZERS:
            raise ValueError(
                f"optim.momentum: {self.optim.momentum} would be ignored: {self.optim.name} has no momentum "
                f"(only {', '.join(MOMENTUM_OPTIMIZERS)} uses it); remove it"
            )
        if self.train.select_on != "final" and self.train.eval_every > iterations:
            raise ValueError(
                f"train.eval_every: {self.train.eval_every} is beyond train.iterations {iterations}, so "
                f"only the final weights are evaluated and train.select_on {self.train.select_on!r} selects "
                "nothing; lower train.eval_every or set train.select_on: final"
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _from_record(cls, data: Any, handler: ModelWrapValidatorHandler[CellConfig]) -> CellConfig:
        """A stored config.json (:meth:`record`) reads back: its ``cell_id`` and ``resolved_loss`` must
        be what this version computes for the config, else the file was written by another version."""
        if not isinstance(data, Mapping) or not {"cell_id", "resolved_loss"} & set(data):
            return handler(data)
        fields = {key: value for key, value in data.items() if key not in ("cell_id", "resolved_loss")}
        cell = handler(fields)
        stored_loss = data.get("resolved_loss", cell.resolved_loss())
        if stored_loss != cell.resolved_loss():
            raise ValueError(
                f"resolved_loss {stored_loss} differs from what this version resolves for loss "
                f"{cell.loss.name!r} ({cell.resolved_loss()}): the file was written by another version of "
                "the harness (or of the loss); read it with that version, or re-run the cell"
            )
        stored_id = data.get("cell_id", cell.cell_id)
        if stored_id != cell.cell_id:
            raise ValueError(
                f"cell_id {stored_id!r} is not the id this version computes for the config "
                f"({cell.cell_id!r}): the file was written by another version of the harness (or edited); "
                "read it with that version, or re-run the cell"
            )
        return cell

    @functools.cached_property
    def cell_id(self) -> str:
        """Stable id: readable axes plus a hash of the resolved config and the resolved loss.

        Computed once per object (the model is frozen); :meth:`model_copy` drops it, since a copy
        with ``update`` is not validated again and may differ.

        The hash covers the cell's config as written (where the data lies excluded) and
        :meth:`resolved_loss`, so changing a preset's numbers gives every cell that uses it a new id
        (and a new training run). Two specs that resolve to the same values but say it differently
        (``preset: official`` versus the official numbers as explicit ``hparams``) keep different ids.
        Fields at their schema default stay out of the hash, so a new option (added with a default that
        keeps the old behaviour) leaves every existing id, and its finished results, valid; changing what
        an existing default means must bump :data:`CELL_ID_VERSION` instead.
        """
        hashed = {
            **_without_empty(self.model_dump(mode="json", exclude=NOT_TRAINING, exclude_defaults=True)),
            "resolved_loss": self.resolved_loss(),
            "id_version": CELL_ID_VERSION,
        }
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:8]
        preset = f"-{self.loss.preset}" if self.loss.preset else ""
        variant = "" if self.variant == "default" else f"-{self.variant}"
        return (
            f"{self.dataset}-{self.loss.name}{preset}-d{self.embedding_size}{variant}-s{self.seed}-{digest}"
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> CellConfig:
        """pydantic's copy, without the cached :attr:`cell_id` of the original."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("cell_id", None)
        return copied

    def resolved_loss(self) -> dict[str, Any]:
        """The loss as this cell trains it (:meth:`LossSpec.resolved`): every hyperparameter, resolved.

        For example ``{"name": "ms", "preset": "official", "hparams": {"alpha": 2.0, "beta": 40.0,
        "lam": 0.5, "eps": 0.1}}``. config.json and final.json
        record it under ``resolved_loss``; the cell id hashes it.
        """
        return self.loss.resolved()

    def record(self) -> dict[str, Any]:
        """What a cell's config.json holds: its id, its config and :meth:`resolved_loss`."""
        return {
            "cell_id": self.cell_id,
            **self.model_dump(mode="json"),
            "resolved_loss": self.resolved_loss(),
        }
