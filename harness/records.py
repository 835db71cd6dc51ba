"""The records of a results folder (final, status, env, grid JSON files): typed, read and written through
here.

Each JSON record of a results folder has one pydantic model here (config.json only as the fields
cells.csv reads: the file itself is ``CellConfig.record()``), and :class:`CellStatus` names every
status a cell or a run's task can have. :func:`write_record` writes a record atomically with the
fields its writer set (so a record written by the crash recorder holds fewer fields than the
trainer's, and the JSON on disk stays what it was); :func:`read_record` reads one back, checked: a
file that is not JSON, not an object, or has a missing or wrongly typed field is the one-line
:class:`~harness.errors.DamagedFileError` naming the file, the field and what to do. Fields other
writers may add are kept as they are (``extra="allow"``).

:class:`CellOutcome` is what training one cell ended with, as the trainer returns it and a launcher
reports it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import DamagedFileError
from harness.files import REWRITE_IT, atomic_write_json, read_json_if_exists

Metrics = dict[str, dict[str, dict[str, float]]]
"""``{weights: {split: {metric: value}}}``, values as fractions in [0, 1]."""


class CellStatus(enum.StrEnum):
    """The status of a cell; the values are the strings in status.json, final.json and cells.csv."""

    PENDING = "pending"
    """Never started (cells.csv and ``--check`` only; no file says it)."""
    RUNNING = "running"
    """Started and not ended (status.json), or its run died: a run resumes it."""
    FINISHED = "finished"
    FAILED = "failed"
    """Non-finite loss, a crash, a dead worker or (tuning) an interrupted trial; the reason says which."""
    PRUNED = "pruned"
    """A tuning trial the pruner stopped (status.json of the trial's folder)."""
    BUSY = "busy"
    """A run's task only: another run holds the cell's lock. Never on disk."""
    DONE_ELSEWHERE = "done elsewhere"
    """A run's task only: another run finished the cell meanwhile. Never on disk."""


ENDED = (CellStatus.FINISHED, CellStatus.FAILED)
"""The statuses of a cell that has ended (final.json holds one of them)."""
ON_DISK = (CellStatus.RUNNING, CellStatus.FINISHED, CellStatus.FAILED, CellStatus.PRUNED)
"""The statuses status.json may hold."""


class Record(BaseModel):
    """A JSON record: strict types (no strings for numbers, no booleans for integers), other fields kept."""

    model_config = ConfigDict(strict=True, extra="allow")


def _one_of(value: CellStatus, allowed: tuple[CellStatus, ...]) -> CellStatus:
    if value not in allowed:
        raise ValueError(f"expected one of {', '.join(repr(str(s)) for s in allowed)}, got {str(value)!r}")
    return value


class StatusRecord(Record):
    """status.json: written when a cell starts (``running``) and when it ends, by the trainer, the crash
    recorder and tuning's pruned and interrupted marks; each writer sets the fields it has."""

    status: CellStatus = Field(strict=False)
    reason: str | None = None
    started: str | None = None
    """When the cell (re)started (the trainer's ``running`` record)."""
    resumed_from: int | None = None
    """The checkpoint's iteration when the start resumed one (None: from scratch)."""
    finished: str | None = None
    """When the cell ended (the end records)."""
    traceback: str | None = None
    """The crash recorder's traceback."""

    @field_validator("status")
    @classmethod
    def _on_disk(cls, value: CellStatus) -> CellStatus:
        return _one_of(value, ON_DISK)


class Timings(Record):
    """The timings of final.json (seconds; images per second)."""

    train_seconds: float | None = None
    final_eval_seconds: float | None = None
    cpu_seconds: float | None = None
    """This process's CPU time since the cell (re)started: less load-sensitive than wall time."""
    median_images_per_s: float | None = None


class FinalRecord(Record):
    """final.json: what a cell ended with; it decides the cell's status (``finished`` or ``failed``).

    The trainer writes every field; the crash recorder (a cell whose training raised) writes only
    ``cell_id``, ``status``, ``reason``, ``metrics`` (empty) and ``finished``: the other fields are
    None (and absent from its file) there.
    """

    status: CellStatus = Field(strict=False)
    cell_id: str | None = None
    reason: str | None = None
    metrics: Metrics = Field(default_factory=dict)
    resolved_loss: dict[str, Any] | None = None
    select_on: str | None = None
    select_metric: str | None = None
    """None with ``select_on: final`` (no selection)."""
    selected_iteration: int | None = None
    selected_value: float | None = None
    iterations: int | None = None
    timings: Timings | None = None
    device: str | None = None
    world_size: int | None = None
    finished: str | None = None

    @field_validator("status")
    @classmethod
    def _ended(cls, value: CellStatus) -> CellStatus:
        return _one_of(value, ENDED)


class EnvRecord(Record):
    """env.json: the environment a cell trained in (package versions, device, git commit, host)."""

    python: str
    platform: str
    host: str
    packages: dict[str, str | None]
    device: str
    torch_threads: int
    git_commit: str | None
    recorded: str
    world_size: int
    gpu: str | None = None
    """GPU name (CUDA devices only)."""
    cuda: str | None = None
    """CUDA version (CUDA devices only)."""


class LossFields(Record):
    """The loss fields of config.json that cells.csv reads."""

    name: str
    preset: str | None = None
    label: str | None = None


class TrainFields(Record):
    """The train fields of config.json that cells.csv reads."""

    select_on: str


class ConfigRecord(Record):
    """config.json as cells.csv reads it (the file holds the whole resolved cell config; see
    ``CellConfig.record``)."""

    experiment: str
    loss: LossFields
    dataset: str
    embedding_size: int
    seed: int
    train: TrainFields
    variant: str = "default"


class GridRecord(Record):
    """grid.json: the cell ids of the grid last run into a results folder."""

    experiment: str
    cell_ids: list[str]


RecordT = TypeVar("RecordT", bound=Record)


def _field_problem(error: ValidationError) -> str:
    """The first problem of a ValidationError as ``field 'x' (at a.b): what``."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if not loc:
        return first["msg"]
    where = f"field {loc[0]!r}" + (f" (at {'.'.join(loc[1:])})" if len(loc) > 1 else "")
    if first["type"] == "missing":
        return f"{where} is missing"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


def parse_record(path: Path, data: object, model: type[RecordT], *, remedy: str = REWRITE_IT) -> RecordT:
    """``data`` (parsed JSON read from ``path``) as a ``model``; anything else is a DamagedFileError."""
    if not isinstance(data, dict):
        problem = f"expected a JSON object, got {type(data).__name__}"
    else:
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problem = _field_problem(err)
    raise DamagedFileError(f"{path}: damaged file, {problem}; {remedy}")


def read_record(path: Path, model: type[RecordT], *, remedy: str = REWRITE_IT) -> RecordT | None:
    """The record in ``path`` (None when the file is absent); a damaged file is a one-line
    DamagedFileError."""
    data = read_json_if_exists(path, remedy=remedy)
    return None if data is None else parse_record(path, data, model, remedy=remedy)


def record_dict(record: Record) -> dict[str, Any]:
    """The fields of ``record`` its writer set (or its file held), as JSON-ready values."""
    return record.model_dump(exclude_unset=True)


def write_record(path: Path, record: Record) -> None:
    """Write ``record`` atomically as indented JSON with sorted keys, with the fields its writer set."""
    atomic_write_json(path, record_dict(record))


@dataclass(frozen=True)
class CellOutcome:
    """What training one cell ended with: its status, the reason when it did not finish, its metrics and
        the training time: what the trainer returns, and what a launcher yields per task (a task that trained
    nothing, ``busy`` or ``done elsewhere``, or crashed has no metrics)."""

    cell_id: str
    status: CellStatus
    reason: str | None = None
    metrics: Metrics = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", CellStatus(self.status))
