"""An experiment validated as a whole and expanded into its grid of cells, and the shards of that grid."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config.loading import load_raw, set_dotted, validation_message
from harness.config.schema import CellConfig, Experiment
from harness.errors import UserError
from harness.plugins import load_plugins


def validate_experiment(data: dict[str, Any], source: str) -> Experiment:
    """Validate a raw experiment mapping (and every cell it expands to); ``source`` names it in errors.

    Its ``imports:`` (plugin modules, see :mod:`harness.plugins`) are imported first, so that the
    losses, backbones and datasets they register are known to the validation.
    """
    imports = data.get("imports") or []
    if isinstance(imports, list):  # anything else is the schema's one-line error
        load_plugins(imports, where=f"{source}: imports")
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as err:
        raise UserError(validation_message(source, err)) from None
    _expand(experiment, source=source)  # validates every variant and dataset override
    return experiment


def load_experiment(path: str | Path, sets: list[str] | None = None) -> Experiment:
    """Read, merge with its base, apply ``--set`` overrides and validate an experiment file."""
    return validate_experiment(load_raw(path, sets), str(path))


def _expand(experiment: Experiment, source: str) -> list[CellConfig]:
    protocol = experiment.model_dump(
        mode="python", exclude={"name", "description", "grid", "dataset_overrides", "cluster", "imports"}
    )
    cells: list[CellConfig] = []
    grid = experiment.grid
    for dataset in grid.datasets:
        for loss in grid.losses:
            for size in grid.sizes_for(dataset):
                for variant, overrides in grid.variants.items():
                    for seed in grid.seeds:
                        raw: dict[str, Any] = copy.deepcopy(protocol)
                        raw.update(
                            experiment=experiment.name,
                            loss=loss.model_dump(),
                            dataset=dataset,
                            embedding_size=size,
                            seed=seed,
                            variant=variant,
                        )
                        layers = (
                            (f"dataset_overrides.{dataset}", experiment.dataset_overrides.get(dataset, {})),
                            (f"grid.variants.{variant}", overrides or {}),
                        )
                        for where, layer in layers:
                            if not isinstance(layer, dict):
                                raise UserError(f"{source}: {where}: expected a mapping of dotted keys")
                            for key, value in layer.items():
                                set_dotted(raw, key, copy.deepcopy(value), where=f"{source}: {where}")
                        try:
                            cells.append(CellConfig.model_validate(raw))
                        except ValidationError as err:
                            where = f"{source} (cell {dataset}/{loss.name}/d{size}/{variant}/seed {seed})"
                            raise UserError(validation_message(where, err)) from None
    return cells


def expand_cells(experiment: Experiment) -> list[CellConfig]:
    """Every cell of the grid, in a fixed order (dataset, loss, size, variant, seed)."""
    return _expand(experiment, source=experiment.name)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard i/n`` (0-based i) into ``(i, n)``."""
    try:
        index_s, count_s = text.split("/")
        index, count = int(index_s), int(count_s)
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n with integers, e.g. --shard 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text!r}: need 0 <= i < n, e.g. --shard 0/4 ... --shard 3/4")
    return index, count


def shard_cells(cells: list[CellConfig], index: int, count: int) -> list[CellConfig]:
    """The deterministic subset of cells shard ``index`` of ``count`` runs: every n-th cell of the grid."""
    return cells[index::count]


def data_root(cfg: CellConfig) -> str | None:
    """The data root of a cell: the config field, else ``$HARNESS_DATA``."""
    return cfg.data.root or os.environ.get("HARNESS_DATA")
