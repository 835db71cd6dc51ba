"""Results on disk: one folder per grid cell, its environment record, and the tidy table of all cells.

Layout (see docs/ARCHITECTURE.md): ``<results>/<experiment>/cells/<cell_id>/`` holds ``config.json``,
``env.json``, ``status.json``, ``train_log.csv``, ``evals.csv``, ``final.json``, ``pair_weights.npz``
and, while the cell runs, ``checkpoint.pt``. Every file is written atomically (:mod:`harness.files`),
so a crash (even ``kill -9``) never leaves a half-written file.

Results are bound to the configuration that produced them: a run records its grid's cell ids in
``<results>/<experiment>/grid.json`` beside ``experiment.yaml``; cells.csv and the report hold only
those cells, and any other folder under ``cells/`` (a run of another configuration into the same
folder) is listed as stale, never pooled. A cell JSON file that is not the object the harness wrote
is a :class:`~harness.errors.DamagedFileError` naming the file and what to do; the records themselves
(their fields, and the statuses) are defined in :mod:`harness.records`.
"""

from __future__ import annotations

import csv
import errno
import io
import platform
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock, Timeout

import losses
from harness.errors import ArgumentParser, DamagedFileError, UserError, cli_main, filesystem_message
from harness.files import atomic_save_npz, atomic_write_csv, atomic_write_text, temporaries
from harness.records import (
    CellStatus,
    ConfigRecord,
    EnvRecord,
    FinalRecord,
    GridRecord,
    StatusRecord,
    read_record,
    write_record,
)

if TYPE_CHECKING:
    from harness.config import CellConfig, Experiment

# The columns of cells.csv, in order: declared here once; the report reads them from here.
CELLS_TABLE_COLUMNS = (
    "experiment",
    "cell_id",
    "loss",
    "loss_label",
    "preset",
    "dataset",
    "embedding_size",
    "seed",
    "variant",
    "status",
    "select_on",
    "weights",
    "split",
    "metric",
    "value",
)
RETRAIN_CELL = "delete its cell folder and re-run the experiment to retrain that cell"


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the harness checkout (with ``+dirty`` if its code is modified), or None.

    Changes under ``results/`` do not count: they are what runs write (regenerating a committed
    reference rewrites tracked files there), not the code that produced them.
    """
    where = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def environment(device: torch.device, world_size: int = 1) -> EnvRecord:
    """Package versions, device, git commit and host (env.json): what a reader needs to trust a number."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for package in ("torch", "torchvision", "pretrainedmodels", "numpy", "optuna", "scipy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": versions,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "recorded": now(),
        "world_size": world_size,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return EnvRecord(**info)


PAIR_WEIGHTS_FILE = "pair_weights.npz"
"""A cell's pair weights; in a reference folder, the aggregate of its cells' pair weights."""


class _CellFile:
    """A :class:`CellPaths` attribute: the path of one named file in the cell's folder."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, paths: CellPaths, owner: type | None = None) -> Path:
        return paths.root / self.name


@dataclass(frozen=True)
class CellPaths:
    """The files of one grid cell."""

    root: Path

    config = _CellFile("config.json")
    env = _CellFile("env.json")
    status = _CellFile("status.json")
    train_log = _CellFile("train_log.csv")
    evals = _CellFile("evals.csv")
    final = _CellFile("final.json")
    pair_weights = _CellFile(PAIR_WEIGHTS_FILE)  # in a reference folder: aggregated, see read_pair_weights
    checkpoint = _CellFile("checkpoint.pt")
    # the lock a run holds while it trains the cell (see :func:`claim_cell`); no result
    lock = _CellFile("cell.lock")

    def weights(self, which: str) -> Path:
        return self.root / f"weights_{which}.pt"

    def status_value(self) -> CellStatus | None:
        """``finished`` or ``failed`` (from final.json), ``running`` (started, not ended) or None (never
        started).

        final.json decides: a cell whose final.json is complete is finished (or failed) whatever its
        status.json says (a run killed between the two writes leaves ``running`` there).
        """
        for record in (self.read_final(), self.read_status()):
            if record is not None:
                return record.status
        return None

    def read_final(self) -> FinalRecord | None:
        """final.json, checked; None when absent."""
        return read_record(self.final, FinalRecord, remedy=RETRAIN_CELL)

    def read_status(self) -> StatusRecord | None:
        """status.json, checked; None when absent."""
        return read_record(self.status, StatusRecord, remedy=RETRAIN_CELL)

    def read_config(self) -> ConfigRecord | None:
        """config.json, checked for the fields cells.csv needs; None when absent."""
        return read_record(self.config, ConfigRecord, remedy=RETRAIN_CELL)


def experiment_dir(results_root: str | Path, experiment: str) -> Path:
    """``<results_root>/<experiment>``."""
    return Path(results_root) / experiment


def cell_paths(exp_dir: Path, cell_id: str) -> CellPaths:
    """The paths of one cell of an experiment."""
    return CellPaths(exp_dir / "cells" / cell_id)


GRID_FILE = "grid.json"
REWRITE_GRID = "re-run `python -m harness.run` on the experiment file to rewrite it (finished cells are kept)"


def _damaged(path: Path, problem: str, remedy: str = RETRAIN_CELL) -> DamagedFileError:
    return DamagedFileError(f"{path}: damaged file, {problem}; {remedy}")


DELETE_CHECKPOINT = "delete it to restart the cell from scratch"


def load_checkpoint(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A cell's checkpoint (``torch.load`` on CPU); a truncated or corrupt file is a DamagedFileError.

    The error names the file and says to delete it (the cell then restarts from scratch); ``required``
    are the keys the checkpoint must hold.
    """
    import pickle
    import zipfile

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _damaged(
            path, f"not a readable checkpoint ({type(err).__name__}: {problem})", DELETE_CHECKPOINT
        ) from None
    missing = [key for key in required if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise _damaged(path, f"the checkpoint lacks {', '.join(missing)}", DELETE_CHECKPOINT)
    return ckpt


def record_experiment(exp_dir: Path, experiment: Experiment, cells: list[CellConfig]) -> None:
    """Write ``experiment.yaml`` (the resolved experiment) and ``grid.json`` (its cell ids) into
    ``exp_dir``."""
    import yaml

    atomic_write_text(
        exp_dir / "experiment.yaml", yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False)
    )
    write_record(
        exp_dir / GRID_FILE, GridRecord(experiment=experiment.name, cell_ids=[c.cell_id for c in cells])
    )


def grid_cell_ids(exp_dir: Path) -> list[str] | None:
    """The cell ids of the grid last run into ``exp_dir`` (``grid.json``); None for results without one."""
    grid = read_record(exp_dir / GRID_FILE, GridRecord, remedy=REWRITE_GRID)
    return None if grid is None else grid.cell_ids


def _cell_folders(exp_dir: Path) -> list[Path]:
    cells_dir = exp_dir / "cells"
    return sorted(p for p in cells_dir.iterdir() if p.is_dir()) if cells_dir.is_dir() else []


def check_cell_records(exp_dir: Path) -> int:
    """Read back the records (final.json, status.json, config.json) of every folder under ``cells/``, the
    stale ones and other shards' included; returns how many folders. A damaged record is the one-line
    :class:`DamagedFileError` naming it, so ``--check`` never lists a damaged cell as finished."""
    folders = _cell_folders(exp_dir)
    for folder in folders:
        paths = CellPaths(folder)
        paths.read_final(), paths.read_status(), paths.read_config()
    return len(folders)


def current_cell_folders(exp_dir: Path) -> list[Path]:
    """The folders under ``cells/`` of the current grid (every folder when the results have no grid.json)."""
    current = grid_cell_ids(exp_dir)
    folders = _cell_folders(exp_dir)
    return folders if current is None else [p for p in folders if p.name in set(current)]


def stale_cell_ids(exp_dir: Path) -> list[str]:
    """The folders under ``cells/`` that are not cells of the current grid (another configuration's runs)."""
    current = set(grid_cell_ids(exp_dir) or [])
    return [p.name for p in _cell_folders(exp_dir) if current and p.name not in current]


def stale_cells_note(exp_dir: Path) -> str | None:
    """One line on the stale cell folders of ``exp_dir`` (None when there are none)."""
    stale = stale_cell_ids(exp_dir)
    if not stale:
        return None
    shown = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
    return (
        f"{len(stale)} cell folder(s) under {exp_dir / 'cells'} are not in the current grid (another "
        f"configuration ran into this folder): left out of cells.csv and the report: {shown}"
    )


def _result_rows(status: CellStatus, final: FinalRecord | None) -> list[dict[str, Any]]:
    """The (weights, split, metric, value) rows of one cell; one empty row when it has no results."""
    metrics = final.metrics if final is not None else {}
    if status != CellStatus.FINISHED or not metrics:
        return [{"weights": "", "split": "", "metric": "", "value": ""}]
    return [
        {"weights": weights, "split": split, "metric": metric, "value": value}
        for weights, splits in sorted(metrics.items())
        for split, values in sorted(splits.items())
        for metric, value in sorted(values.items())
    ]


def _cell_status(paths: CellPaths, final: FinalRecord | None) -> CellStatus:
    if final is not None:
        return final.status
    status = paths.read_status()
    return CellStatus.PENDING if status is None else status.status


def tidy_rows(exp_dir: Path) -> list[dict[str, Any]]:
    """One row per (cell, weights, split, metric) over the current grid's cells stored under ``exp_dir``."""
    rows: list[dict[str, Any]] = []
    for folder in current_cell_folders(exp_dir):
        paths = CellPaths(folder)
        config = paths.read_config()
        if config is None:
            continue
        final = paths.read_final()
        status = _cell_status(paths, final)
        base = {
            "experiment": config.experiment,
            "cell_id": folder.name,
            "loss": config.loss.name,
            "loss_label": config.loss.label or loss_label(config.loss.name),
            "preset": config.loss.preset or "",
            "dataset": config.dataset,
            "embedding_size": config.embedding_size,
            "seed": config.seed,
            "variant": config.variant,
            "status": status,
            "select_on": config.train.select_on,
        }
        rows += [{**base, **result} for result in _result_rows(status, final)]
    return rows


def cells_table_mismatch(exp_dir: Path) -> str | None:
    """How ``cells.csv`` disagrees with the current grid's cells under ``cells/`` (ids, rows per cell), or
    None.

    None also when there is no ``cells/`` folder to compare with. A file cut short (no final newline,
    missing cells or rows) or one pooling other cells is reported, so it can be rebuilt.
    """
    expected: dict[str, int] = {}
    for folder in current_cell_folders(exp_dir):
        paths = CellPaths(folder)
        if paths.config.is_file():
            final = paths.read_final()
            expected[folder.name] = len(_result_rows(_cell_status(paths, final), final))
    if not (exp_dir / "cells").is_dir():
        return None
    try:
        text = (exp_dir / "cells.csv").read_text(encoding="utf-8")
    except FileNotFoundError:
        return "the file is missing" if expected else None
    except UnicodeDecodeError:
        return "the file is not UTF-8 text"
    if text and not text.endswith("\n"):
        return "the file ends in the middle of a line (cut short)"
    try:
        found = Counter(row.get("cell_id") or "" for row in csv.DictReader(io.StringIO(text)))
    except csv.Error as err:
        return f"the file is not readable as CSV ({err})"
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    wrong = [c for c in expected if c in found and found[c] != expected[c]]
    problems = [
        f"{len(ids)} {what} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
        for ids, what in (
            (missing, "cell(s) of cells/ missing"),
            (extra, "cell(s) not in the current grid's cells/"),
            (wrong, "cell(s) with a wrong number of rows"),
        )
        if ids
    ]
    return "; ".join(problems) or None


def loss_label(name: str) -> str:
    """The paper's row label of a registered loss (``losses.info(name).label``); any other name as it is."""
    return losses.info(name).label if name in losses.available() else name


def write_cells_table(exp_dir: Path) -> Path:
    """(Re)write ``<exp_dir>/cells.csv`` from the stored cells; returns its path."""
    path = exp_dir / "cells.csv"
    atomic_write_csv(path, tidy_rows(exp_dir), CELLS_TABLE_COLUMNS)
    return path


FOLDER_LOCK_SECONDS = 600


@contextmanager
def claim_cell(paths: CellPaths) -> Iterator[bool]:
    """Hold the cell's lock for the block: yields True when this process claimed it, False when another holds
    it.

    The lock is an OS file lock (released when its process ends, even by ``kill -9``), so a cell whose
    status says ``running`` while nobody holds its lock was left by a run that died: claim and resume it.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(paths.lock)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def folder_lock(exp_dir: Path, seconds: float = FOLDER_LOCK_SECONDS) -> Iterator[None]:
    """Hold the results folder's short lock (experiment.yaml, cells.csv, the report), waiting up to
    ``seconds``."""
    lock = FileLock(exp_dir / ".lock")
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=seconds)
    except Timeout:  # (an OSError too: caught first)
        raise UserError(
            f"{exp_dir}: another run has held the results folder's lock for {seconds:.0f} s; "
            "wait for it to finish, then re-run"
        ) from None
    except OSError as err:
        raise UserError(
            filesystem_message(err)
            or f"{exp_dir}: cannot write the results folder "
            f"({err.strerror or err}); fix it or choose another one with --results"
        ) from None
    try:
        yield
    finally:
        lock.release()


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files that atomic writes in ``folder`` left behind (a killed run); returns how
    many."""
    stale = temporaries(folder)
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


# ------------------------------------------------------------------------------------ reference folders

CELL_HOLDERS = ("cells", "trials")
"""The folders whose subfolders are cells: a run's ``cells/<id>/``, a study's ``trials/<n>/``."""
UNREAD_CELL_FILES = ("train.log",)
"""Cell files no report reads (a worker's output under ``--jobs N``): left out of a reference folder."""
PAIR_KINDS = ("pos", "neg")


def read_pair_weights(paths: CellPaths) -> dict[str, np.ndarray]:
    """A cell's pair weights (``pos``, ``neg``): its own pair_weights.npz, else its entry in the aggregate
    beside the folder holding the cell (``<exp>/pair_weights.npz``, key ``cells/<id>/pos``; see
    :func:`aggregate_reference`).

    FileNotFoundError when neither holds them; a damaged file raises what ``numpy.load`` raises.
    """
    source, prefix = paths.pair_weights, ""
    if not source.is_file():
        source = paths.root.parent.parent / PAIR_WEIGHTS_FILE
        prefix = f"{paths.root.parent.name}/{paths.root.name}/"
    with source.open("rb") as handle, np.load(handle, allow_pickle=False) as npz:
        if prefix and prefix + PAIR_KINDS[0] not in npz.files:
            raise FileNotFoundError(errno.ENOENT, "no pair weights for this cell", str(paths.pair_weights))
        return {kind: np.asarray(npz[prefix + kind]) for kind in PAIR_KINDS}


def _aggregate_pair_weights(holder: Path, cells: Path) -> Path | None:
    """Move the pair_weights.npz of every cell under ``cells`` into ``holder/pair_weights.npz``, keyed by
    the cell folder relative to ``holder``; entries already there are kept while their folder exists."""
    target = holder / PAIR_WEIGHTS_FILE
    arrays: dict[str, np.ndarray] = {}
    if target.is_file():
        with np.load(target, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files if (holder / key).parent.is_dir()}
    found = sorted(cells.rglob(PAIR_WEIGHTS_FILE))
    for path in found:
        folder = path.parent.relative_to(holder).as_posix()
        with np.load(path, allow_pickle=False) as npz:
            arrays.update({f"{folder}/{kind}": npz[kind] for kind in PAIR_KINDS})
    if not found:
        return None
    atomic_save_npz(target, dict(sorted(arrays.items())))
    for path in found:
        path.unlink()
    return target


def aggregate_reference(folder: Path) -> list[Path]:
    """Shrink a reference folder to what the reports read: one pair_weights.npz per run (and per study)
    instead of one per cell, and no :data:`UNREAD_CELL_FILES`; returns the aggregates written.

    Every folder below ``folder`` (itself included) holding ``cells/`` or ``trials/`` gets the aggregate
    of its cells' pair weights; :func:`read_pair_weights` reads a cell's entry there. Run again after
    cells were added or retrained: their new files replace their entries.
    """
    written = []
    for cells in sorted(d for name in CELL_HOLDERS for d in folder.rglob(name) if d.is_dir()):
        aggregate = _aggregate_pair_weights(cells.parent, cells)
        if aggregate is not None:
            written.append(aggregate)
    for name in UNREAD_CELL_FILES:
        for path in folder.rglob(name):
            path.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.results --aggregate DIR``: :func:`aggregate_reference` on an existing folder."""
    parser = ArgumentParser(
        prog="python -m harness.results",
        description="Shrink a committed reference folder to what the reports read: one pair_weights.npz "
        "per run and per study instead of one per cell, no train.log.",
    )
    parser.add_argument("--aggregate", type=Path, required=True, metavar="DIR", help="the reference folder")
    folder = parser.parse_args(argv).aggregate
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; expected a results folder, e.g. results/reference/<name>")
    written = aggregate_reference(folder)
    print(f"{len(written)} pair-weight aggregate(s) written under {folder}")
    return 0


if __name__ == "__main__":
    cli_main(main)
