"""Checks of an experiment that need no training: run by ``harness.run --check`` and before a run trains.

A grid should never die at its first evaluation (or halfway through) for a mistake visible up front.
:func:`preflight` looks at every cell and returns one line per problem: a data root or dataset folder
that is missing, ``classes_per_batch`` above the number of training classes and ``samples_per_class``
above the images of the largest one (from the dataset's list files or, for glyphs, its options), a
value given in ``evaluate.ks`` beyond the smallest gallery, a listed image file that is missing or
empty (one ``stat`` each; with ``decode`` every image is decoded too), a ``data.options`` key the
dataset does not take, an unusable glyph cache folder, a ``select_metric`` the evaluation does not
measure, ``select_on: val`` without a validation split, a ``model.weights`` file that is missing, a
missing standard weights file whose URL cannot be reached (:func:`preflight_report` also lists those
that will be downloaded when the run starts), and a logger of ``tracking.loggers`` whose package is not
installed (MLflow is an optional extra).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from harness.config import CellConfig, Experiment, data_root
from harness.errors import UserError
from harness.models.weights import MissingWeights, missing_weights
from harness.tracking import missing_packages


class DataFacts(NamedTuple):
    """What the checks need to know of a cell's data, read from its list files (or glyph options)."""

    train_classes: int  # the classes the sampler draws from (training less validation)
    largest_class: int  # images of the largest of them
    galleries: dict[str, int]  # evaluated split -> how many images a query is ranked against


def _data_facts(cell: CellConfig, decode: bool) -> DataFacts:
    """The :class:`DataFacts` of a cell; every listed image is checked (``decode``: decoded) on the way.

    Glyphs are described from their options (nothing is rendered); a real dataset's splits are built
    from its list files, which checks them and ``stat``s every listed image file.
    """
    from harness.data import DATASETS, DatasetRequest, split_classes
    from harness.data.catalog import GLYPH_OPTIONS, OFFICIAL

    if cell.dataset not in OFFICIAL:
        entry = DATASETS[cell.dataset]
        request = DatasetRequest(
            root=data_root(cell),
            image_size=cell.data.image_size,
            convention=entry.convention,
            strict_counts=cell.data.strict_counts,
            options=cell.data.options,
        )
        class_ids = np.asarray(entry.train_classes(request))  # one id per image, or per class for glyphs
        galleries: dict[str, int] = {}
        if cell.dataset == "glyphs":
            options = {**GLYPH_OPTIONS, **cell.data.options}
            per_class, num_classes = int(options["instances_per_class"]), int(options["num_classes"])
            class_ids = np.repeat(class_ids, per_class)
            galleries["test"] = (num_classes - num_classes // 2) * per_class - 1
        train_idx, val_idx = split_classes(class_ids, cell.data.val_fraction, cell.data.val_seed)
        if val_idx.size and galleries:
            galleries["val"] = int(val_idx.size) - 1
        labels = class_ids[train_idx]
    else:
        from harness.builders import load_splits
        from harness.data import verify_images

        splits = load_splits(cell)
        if decode:
            verify_images(splits, decode=True, progress=True)
        labels = np.asarray(splits.train.labels)
        leave_one_out = {"val": splits.val, "test": splits.test}
        galleries = {split: len(data) - 1 for split, data in leave_one_out.items() if data is not None}
        if splits.gallery is not None:
            galleries["gallery"] = len(splits.gallery)
    _, sizes = np.unique(labels, return_counts=True)
    return DataFacts(len(sizes), int(sizes.max()), galleries)


def _default_ks(dataset: str) -> tuple[int, ...]:
    from harness.data import DATASETS

    return DATASETS[dataset].default_ks


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


def _missing_weights(cell: CellConfig, cache: dict[str, MissingWeights | None]) -> MissingWeights | None:
    """The standard weights file ``cell`` would load that is missing from its cache, or None."""
    if not cell.model.pretrained or cell.model.weights:
        return None
    if cell.model.backbone not in cache:
        cache[cell.model.backbone] = missing_weights(cell.model.backbone)
    return cache[cell.model.backbone]


def _cell_problems(
    cell: CellConfig,
    classes: dict[str, DataFacts | str],
    standard_weights: dict[str, MissingWeights | None],
    decode: bool,
) -> list[str]:
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
    missing = _missing_weights(cell, standard_weights)
    if missing is not None and missing.unreachable is not None:
        problems.append(missing.line())
    problems += _data_problems(cell)
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
            classes[key] = _data_facts(cell, decode)
        except UserError as err:  # missing data root or list files, a val_fraction leaving too few classes
            classes[key] = str(err)
    found = classes[key]
    if isinstance(found, str):
        problems.append(found)
        return problems
    if cell.data.classes_per_batch > found.train_classes:
        problems.append(
            f"data.classes_per_batch is {cell.data.classes_per_batch} but {cell.dataset} trains on "
            f"{found.train_classes} classes (after data.val_fraction {cell.data.val_fraction}); use "
            f"data.classes_per_batch <= {found.train_classes}"
        )
    if cell.data.samples_per_class > found.largest_class:
        problems.append(
            f"data.samples_per_class is {cell.data.samples_per_class} but no {cell.dataset} training class "
            f"has more than {found.largest_class} images, so every batch would repeat images; use "
            f"data.samples_per_class <= {found.largest_class}"
        )
    # the dataset's own K values (ks: null) fit its official splits; a subset used on purpose keeps them
    ks = cell.evaluate.ks or []
    split, gallery = min(found.galleries.items(), key=lambda item: item[1], default=("", max(ks, default=0)))
    if ks and max(ks) > gallery:
        problems.append(
            f"evaluate.ks: K {max(ks)} is more than the {gallery} images a {split} query is ranked against, "
            f"so Recall@{max(ks)} would say nothing; use K values <= {gallery}"
        )
    return problems


def _data_problems(cell: CellConfig) -> list[str]:
    """A ``data.options`` key the dataset does not take; a glyph cache folder that cannot be used."""
    from harness.data import check_options

    problems = []
    try:
        check_options(cell.dataset, cell.data.options)
    except UserError as err:
        problems.append(str(err))
    if cell.dataset == "glyphs":
        from harness.data.glyphs import cache_problem

        problem = cache_problem(cell.data.cache_dir)
        if problem:
            problems.append(f"data.cache_dir: {problem}")
    return problems


def preflight(experiment: Experiment, cells: list[CellConfig], *, decode: bool = False) -> list[str]:
    """Every problem of ``cells`` found without training, one line each, each listed once, in grid order.

    ``decode``: decode every listed image too (slow; a progress bar on a terminal).
    """
    return preflight_report(experiment, cells, decode=decode)[0]


def preflight_report(
    experiment: Experiment, cells: list[CellConfig], *, decode: bool = False
) -> tuple[list[str], list[str]]:
    """:func:`preflight`'s problems, and notes: the missing standard weights files the run will download."""
    problems: list[str] = []
    classes: dict[str, DataFacts | str] = {}
    standard_weights: dict[str, MissingWeights | None] = {}
    for cell in cells:
        for problem in _cell_problems(cell, classes, standard_weights, decode):
            line = f"{experiment.name}: {problem}"
            if line not in problems:
                problems.append(line)
    notes = [m.line() for m in standard_weights.values() if m is not None and m.unreachable is None]
    return problems, notes


def print_preflight(experiment: Experiment, cells: list[CellConfig], *, decode: bool = False) -> bool:
    """``--check``'s preflight: print the notes (stdout) and problems (stderr) of :func:`preflight_report`;
    True when there is no problem."""
    problems, notes = preflight_report(experiment, cells, decode=decode)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return not problems


def require_preflight(experiment: Experiment, cells: list[CellConfig], *, decode: bool = False) -> None:
    """Raise a one-line UserError with the first problem :func:`preflight` finds (and how many more)."""
    problems = preflight(experiment, cells, decode=decode)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): see --check)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
