"""The cell records (harness.records): round trips, one-line errors for damaged files, the committed
reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.errors import DamagedFileError
from harness.files import atomic_write_bytes
from harness.records import (
    CellOutcome,
    CellStatus,
    ConfigRecord,
    EnvRecord,
    FinalRecord,
    GridRecord,
    Record,
    StatusRecord,
    Timings,
    read_record,
    record_dict,
    write_record,
)
from harness.results import environment

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference"
RECORD_FILES: dict[str, type[Record]] = {
    "final.json": FinalRecord,
    "status.json": StatusRecord,
    "env.json": EnvRecord,
    "grid.json": GridRecord,
}

TRAINER_FINAL = FinalRecord(
    cell_id="glyphs-ms-d16-s0-0123abcd",
    status=CellStatus.FINISHED,
    reason=None,
    resolved_loss={"name": "ms", "preset": None, "hparams": {"alpha": 2.0}},
    select_on="val",
    select_metric="recall@1",
    selected_iteration=16,
    selected_value=0.5,
    iterations=24,
    metrics={"final": {"test": {"recall@1": 0.25}}, "selected": {"test": {"recall@1": 0.5}}},
    timings=Timings(train_seconds=1.5, final_eval_seconds=0.5, cpu_seconds=2.0, median_images_per_s=None),
    device="cpu",
    world_size=1,
    finished="2026-01-01T00:00:00+00:00",
)
CRASH_FINAL = FinalRecord(
    cell_id="glyphs-ms-d16-s0-0123abcd",
    status=CellStatus.FAILED,
    reason="RuntimeError: boom",
    metrics={},
    finished="2026-01-01T00:00:00+00:00",
)
RECORDS = [
    TRAINER_FINAL,
    CRASH_FINAL,
    StatusRecord(
        status=CellStatus.RUNNING, reason=None, started="2026-01-01T00:00:00+00:00", resumed_from=None
    ),
    StatusRecord(status=CellStatus.FAILED, reason="x", finished="2026-01-01T00:00:00+00:00", traceback="tb"),
    StatusRecord(
        status=CellStatus.PRUNED, reason="pruned at iteration 8", finished="2026-01-01T00:00:00+00:00"
    ),
    environment(torch.device("cpu"), world_size=2),
    GridRecord(experiment="tiny", cell_ids=["a", "b"]),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_each_record_round_trips_with_the_fields_its_writer_set(tmp_path: Path, record: Record) -> None:
    path = tmp_path / "record.json"
    write_record(path, record)
    back = read_record(path, type(record))
    assert back == record and record_dict(back) == record_dict(record)
    assert set(json.loads(path.read_text())) == record.model_fields_set
    write_record(path, back)  # reading and writing again gives the same bytes
    assert path.read_text() == json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True) + "\n"


def test_the_crash_recorder_final_holds_only_its_fields(tmp_path: Path) -> None:
    path = tmp_path / "final.json"
    write_record(path, CRASH_FINAL)
    assert set(json.loads(path.read_text())) == {"cell_id", "status", "reason", "metrics", "finished"}
    back = read_record(path, FinalRecord)
    assert back is not None and back.timings is None and back.iterations is None


def test_an_absent_record_is_none(tmp_path: Path) -> None:
    assert read_record(tmp_path / "final.json", FinalRecord) is None


@pytest.mark.parametrize(
    ("model", "content", "problem"),
    [
        (FinalRecord, b'{"status": "finished", "metr', "not valid JSON"),
        (FinalRecord, b"[1, 2]", "expected a JSON object, got list"),
        (FinalRecord, b'{"reason": null}', "field 'status' is missing"),
        (FinalRecord, b'{"status": "finished", "iterations": "24"}', "field 'iterations'"),
        (FinalRecord, b'{"status": "finished", "iterations": true}', "field 'iterations'"),
        (FinalRecord, b'{"status": "finished", "metrics": {"final": 3}}', "field 'metrics' (at final)"),
        (FinalRecord, b'{"status": "running"}', "field 'status': expected one of 'finished', 'failed'"),
        (StatusRecord, b'{"status": "busy"}', "field 'status'"),
        (StatusRecord, b'{"status": "done"}', "field 'status'"),
        (EnvRecord, b'{"device": "cpu"}', "is missing"),
        (GridRecord, b'{"experiment": "x", "cell_ids": [1]}', "field 'cell_ids' (at 0)"),
        (ConfigRecord, b'{"cell_id": "x"}', "field 'experiment' is missing"),
    ],
)
def test_a_damaged_record_is_one_line_naming_the_file_and_field(
    tmp_path: Path, model: type[Record], content: bytes, problem: str
) -> None:
    path = tmp_path / "cell" / "record.json"
    atomic_write_bytes(path, content)
    with pytest.raises(DamagedFileError) as caught:
        read_record(path, model, remedy="delete it")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: damaged file, ") and problem in message
    assert message.endswith("; delete it")


def test_the_status_values_are_the_strings_on_disk() -> None:
    assert {s.value for s in CellStatus} == {
        "pending",
        "running",
        "finished",
        "failed",
        "pruned",
        "busy",
        "done elsewhere",
    }
    for status in CellStatus:
        assert status == status.value and str(status) == status.value and f"{status}" == status.value
        assert json.dumps({"status": status}) == json.dumps({"status": status.value})


def test_a_cell_outcome_holds_its_status_as_the_enum() -> None:
    outcome = CellOutcome("a", "finished")  # type: ignore[arg-type]  # a plain string, as older callers pass
    assert outcome.status is CellStatus.FINISHED and outcome.metrics == {}
    with pytest.raises(ValueError):
        CellOutcome("a", "done")  # type: ignore[arg-type]


def _reference_records() -> list[tuple[Path, type[Record]]]:
    return [(path, model) for name, model in RECORD_FILES.items() for path in sorted(REFERENCE.rglob(name))]


def test_every_record_of_the_committed_reference_parses_and_writes_back_identically(tmp_path: Path) -> None:
    found = _reference_records()
    names = {path.name for path, _ in found}
    assert names == set(RECORD_FILES), f"the reference lacks {set(RECORD_FILES) - names}"
    for path, model in found:
        record = read_record(path, model)
        assert record is not None
        copy = tmp_path / path.name
        write_record(copy, record)
        assert copy.read_bytes() == path.read_bytes(), path
