"""Results on disk: one folder per grid cell, its environment record, and the tidy table of all cells.

Layout (see docs/ARCHITECTURE.md): ``<results>/<experiment>/cells/<cell_id>/`` holds ``config.json``,
``env.json``, ``status.json``, ``train_log.csv``, ``evals.csv``, ``final.json``, ``pair_weights.npz``
and, while the cell runs, ``checkpoint.pt``. Every file is written atomically (:mod:`harness.files`),
so a crash (even ``kill -9``) never leaves a half-written file.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import losses

# atomic_save_npz, atomic_torch_save, atomic_write_bytes/json/text are transitional re-exports (harness.run
# still imports two of them from here); new code imports them from harness.files.
from harness.files import (  # noqa: F401
    atomic_save_npz,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    read_json_if_exists,
)

# The columns of cells.csv, in order: declared here once; the report reads them from here.
CELLS_TABLE_COLUMNS = (
    "experiment", "cell_id", "loss", "loss_label", "preset", "dataset", "embedding_size", "seed",
    "variant", "status", "select_on", "weights", "split", "metric", "value",
)  # fmt: skip
RETRAIN_CELL = "delete its cell folder and re-run the experiment to retrain that cell"


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the harness checkout (with ``+dirty`` if modified), or None."""
    where = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, Any]:
    """Package versions, device, git commit and host: what a reader needs to trust a number."""
    from importlib import metadata

    versions = {}
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
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


@dataclass(frozen=True)
class CellPaths:
    """The files of one grid cell."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.csv"

    @property
    def evals(self) -> Path:
        return self.root / "evals.csv"

    @property
    def final(self) -> Path:
        return self.root / "final.json"

    @property
    def pair_weights(self) -> Path:
        return self.root / "pair_weights.npz"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    def weights(self, which: str) -> Path:
        return self.root / f"weights_{which}.pt"

    def status_value(self) -> str | None:
        """``finished`` or ``failed`` (from final.json), ``running`` (started, not ended) or None (never started)."""
        for path in (self.final, self.status):
            data = read_json_if_exists(path, remedy=RETRAIN_CELL)
            if data is not None:
                return data.get("status")
        return None


def experiment_dir(results_root: str | Path, experiment: str) -> Path:
    """``<results_root>/<experiment>``."""
    return Path(results_root) / experiment


def cell_paths(exp_dir: Path, cell_id: str) -> CellPaths:
    """The paths of one cell of an experiment."""
    return CellPaths(exp_dir / "cells" / cell_id)


def tidy_rows(exp_dir: Path) -> list[dict[str, Any]]:
    """One row per (cell, weights, split, metric) over every cell stored under ``exp_dir``."""
    rows: list[dict[str, Any]] = []
    cells_dir = exp_dir / "cells"
    for folder in sorted(p for p in cells_dir.iterdir() if p.is_dir()) if cells_dir.is_dir() else []:
        paths = CellPaths(folder)
        config = read_json_if_exists(paths.config, remedy=RETRAIN_CELL)
        if config is None:
            continue
        final = read_json_if_exists(paths.final, remedy=RETRAIN_CELL) or {}
        status = final.get("status") or paths.status_value() or "pending"
        base = {
            "experiment": config["experiment"],
            "cell_id": folder.name,
            "loss": config["loss"]["name"],
            "loss_label": config["loss"].get("label") or loss_label(config["loss"]["name"]),
            "preset": config["loss"].get("preset") or "",
            "dataset": config["dataset"],
            "embedding_size": config["embedding_size"],
            "seed": config["seed"],
            "variant": config.get("variant", "default"),
            "status": status,
            "select_on": config["train"]["select_on"],
        }
        metrics = final.get("metrics") or {}
        if status != "finished" or not metrics:
            rows.append({**base, "weights": "", "split": "", "metric": "", "value": ""})
            continue
        for weights, splits in sorted(metrics.items()):
            for split, values in sorted(splits.items()):
                for metric, value in sorted(values.items()):
                    rows.append({**base, "weights": weights, "split": split, "metric": metric, "value": value})
    return rows


def loss_label(name: str) -> str:
    """The paper's row label of a registered loss (``losses.info(name).label``); any other name as it is."""
    return losses.info(name).label if name in losses.available() else name


def write_cells_table(exp_dir: Path) -> Path:
    """(Re)write ``<exp_dir>/cells.csv`` from the stored cells; returns its path."""
    path = exp_dir / "cells.csv"
    atomic_write_csv(path, tidy_rows(exp_dir), CELLS_TABLE_COLUMNS)
    return path
