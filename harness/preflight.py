"""Checks of an experiment that need no training: run by ``harness.run --check`` and before a run trains.

A grid should never die at its first evaluation (or halfway through) for a mistake visible up front.
:func:`preflight` looks at every cell and returns one line per problem: a data root or dataset folder
that is missing, ``classes_per_batch`` above the number of training classes (from the dataset's list
files or, for glyphs, its options; no image is opened), a ``select_metric`` the evaluation does not
measure, ``select_on: val`` without a validation split, a ``model.weights`` file that is missing, and a
logger of ``tracking.loggers`` whose package is not installed (MLflow is an optional extra).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from harness.config import CellConfig, Experiment, data_root
from harness.errors import UserError
from harness.tracking import missing_packages


def _training_classes(cell: CellConfig) -> int:
    """How many classes the sampler draws from: the training classes less those kept for validation."""
    from harness.data import OFFICIAL, split_classes

    if cell.dataset == "glyphs":
        from harness.data.glyphs import build_glyph_splits

        default = inspect.signature(build_glyph_splits).parameters["num_classes"].default
        class_ids = np.arange(int(cell.data.options.get("num_classes", default)) // 2)
    else:
        from harness.data.official import check_splits, find_dataset_folder

        spec = OFFICIAL[cell.dataset]
        folder = find_dataset_folder(spec, data_root(cell))
        lists = spec.read(folder)
        check_splits(spec, folder, lists, strict_counts=cell.data.strict_counts)
        class_ids = lists["train"].class_ids
    train_idx, _ = split_classes(class_ids, cell.data.val_fraction, cell.data.val_seed)
    return len(np.unique(np.asarray(class_ids)[train_idx]))


def _default_ks(dataset: str) -> tuple[int, ...]:
    from harness.data import OFFICIAL
    from harness.data.glyphs import EVAL_KS

    return OFFICIAL[dataset].default_ks if dataset in OFFICIAL else EVAL_KS


def _metric_problem(cell: CellConfig) -> str | None:
    """Why ``train.select_metric`` is not among the metrics each evaluation measures, or None."""
    metric, wanted = cell.train.select_metric, cell.evaluate.metrics
    ks = cell.evaluate.ks or list(_default_ks(cell.dataset))
    measured = [f"recall@{k}" for k in ks] * ("recall" in wanted) + [m for m in wanted if m != "recall"]
    if metric in measured:
        return None
    return (
        f"train.select_metric: {metric!r} is not measured (evaluate.metrics {wanted}, ks {ks} give "
        f"{', '.join(measured)}); pick one of those or add it to evaluate.metrics / evaluate.ks"
    )


def _cell_problems(cell: CellConfig, classes: dict[str, int | str]) -> list[str]:
    problems = []
    if cell.train.select_on == "val" and cell.data.val_fraction == 0:
        problems.append(
            "train.select_on is 'val' but data.val_fraction is 0 (no validation split); "
            "set data.val_fraction > 0 or train.select_on: final (no selection)"
        )
    metric = _metric_problem(cell)
    if metric:
        problems.append(metric)
    weights = cell.model.weights
    if cell.model.pretrained and weights and not Path(weights).expanduser().is_file():
        problems.append(f"model.weights: file {weights} not found; give the path to the weights file")
    problems += missing_packages(cell)
    key = repr(
        (
            cell.dataset,
            data_root(cell),
            cell.data.strict_counts,
            cell.data.val_fraction,
            cell.data.val_seed,
            sorted(cell.data.options.items()),
        )
    )
    if key not in classes:
        try:
            classes[key] = _training_classes(cell)
        except UserError as err:  # missing data root or list files, a val_fraction leaving too few classes
            classes[key] = str(err)
    found = classes[key]
    if isinstance(found, str):
        problems.append(found)
    elif cell.data.classes_per_batch > found:
        problems.append(
            f"data.classes_per_batch is {cell.data.classes_per_batch} but {cell.dataset} trains on "
            f"{found} classes (after data.val_fraction {cell.data.val_fraction}); use "
            f"data.classes_per_batch <= {found}"
        )
    return problems


def preflight(experiment: Experiment, cells: list[CellConfig]) -> list[str]:
    """Every problem of ``cells`` found without training, one line each, each listed once, in grid order."""
    problems: list[str] = []
    classes: dict[str, int | str] = {}
    for cell in cells:
        for problem in _cell_problems(cell, classes):
            line = f"{experiment.name}: {problem}"
            if line not in problems:
                problems.append(line)
    return problems


def require_preflight(experiment: Experiment, cells: list[CellConfig]) -> None:
    """Raise a one-line UserError with the first problem :func:`preflight` finds (and how many more)."""
    problems = preflight(experiment, cells)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): see --check)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
