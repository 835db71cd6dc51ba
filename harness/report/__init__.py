"""`python -m harness.report DIR`: report.md and figures of one experiment, from its stored runs only.

Reads ``DIR/cells.csv`` (and each cell's ``final.json``, ``train_log.csv``, ``evals.csv``,
``pair_weights.npz``) and the paper's tables (``harness/paper/``) in :mod:`.reading`, computes the
statistics of :mod:`harness.stats` into the tables of :mod:`.tables`, draws the figures of
:mod:`.figures` (drawing in :mod:`.plots`) and, from cells that kept their weights, the retrieval
examples and embedding maps of :mod:`.examples`, and writes ``DIR/report.md`` (:mod:`.sections`) plus
``DIR/figures/*.png|svg``. No training. Values in cells.csv are fractions; they are
converted to percent once, in :func:`to_percent`, when read; everything after that is percent.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from harness.errors import ArgumentParser
from harness.plugins import add_import_argument, load_plugins
from harness.report.decisions import default_reference
from harness.report.reading import (
    CELL_GROUP,
    DATASET_NAMES,
    DEFAULT_MAP_CLASSES,
    DEFAULT_MARGIN,
    FIGURE_FAMILY,
    PAPER_DIR,
    REFERENCE_ROOT,
    TEST_FAMILY,
    WEIGHTS_ORDER,
    CellFiles,
    ReportContext,
    ReportOptions,
    load_paper_tables,
    paper_reference,
    read_cell_files,
    read_cells,
    row_labels,
    row_order,
    table_loss_order,
    to_percent,
)
from harness.report.sections import load_context, write_report
from harness.results import folder_lock
from harness.stats import DEFAULT_AGREEMENT_MARGIN

__all__ = [
    "CELL_GROUP",
    "DATASET_NAMES",
    "DEFAULT_MAP_CLASSES",
    "DEFAULT_MARGIN",
    "FIGURE_FAMILY",
    "PAPER_DIR",
    "REFERENCE_ROOT",
    "TEST_FAMILY",
    "WEIGHTS_ORDER",
    "CellFiles",
    "ReportContext",
    "ReportOptions",
    "default_reference",
    "load_context",
    "load_paper_tables",
    "main",
    "paper_reference",
    "read_cell_files",
    "read_cells",
    "row_labels",
    "row_order",
    "table_loss_order",
    "to_percent",
    "write_report",
]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.report DIR [options]``; prints the report's path."""
    parser = ArgumentParser(
        prog="python -m harness.report",
        description="Write report.md and figures/ for one experiment from its stored results (no training).",
    )
    parser.add_argument(
        "experiment_dir", type=Path, help="results directory of one experiment (has cells.csv)"
    )
    parser.add_argument("--paper", type=Path, default=None, help=f"the paper's tables (default: {PAPER_DIR})")
    parser.add_argument(
        "--all-pairs",
        action="store_true",
        help="compare every pair of losses (Holm over all pairs) instead of the planned comparisons, "
        "MS against each other loss",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        metavar="POINTS",
        help="equivalence margin of the paper verdicts: 'reproduced within ±POINTS points' is "
        f"printed only when two one-sided tests show it (default: {DEFAULT_MARGIN:g})",
    )
    parser.add_argument(
        "--agreement-margin",
        type=float,
        default=DEFAULT_AGREEMENT_MARGIN,
        metavar="POINTS",
        help="a row agrees with the reference run when two one-sided tests show its test Recall@1 within "
        f"±POINTS points of it (default: {DEFAULT_AGREEMENT_MARGIN:g})",
    )
    parser.add_argument(
        "--examples-seed",
        type=int,
        default=None,
        metavar="SEED",
        help="the seed of the cells whose kept weights (train.keep_weights) draw the retrieval examples "
        "and embedding maps (default: the control's first seed)",
    )
    parser.add_argument(
        "--map-classes",
        type=int,
        default=DEFAULT_MAP_CLASSES,
        metavar="N",
        help="test classes drawn in each embedding map, chosen with a fixed seed "
        f"(default: {DEFAULT_MAP_CLASSES})",
    )
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="DIR",
        help="a committed reference run of this experiment to check agreement with, row by row "
        f"(default: {REFERENCE_ROOT}/<experiment>/ when it exists)",
    )
    reference.add_argument("--no-reference", action="store_true", help="no agreement section")
    add_import_argument(parser)
    args = parser.parse_args(argv)
    load_plugins(args.imports)  # loss labels of plugin losses (cells.csv already holds those of the run)
    exp_dir = args.experiment_dir  # a run may be writing into a folder with cells/: wait for its lock
    with folder_lock(exp_dir) if (exp_dir / "cells").is_dir() else contextlib.nullcontext():
        print(
            write_report(
                args.experiment_dir,
                paper_dir=args.paper,
                all_pairs=args.all_pairs,
                margin=args.margin,
                reference=False if args.no_reference else args.reference,
                agreement_margin=args.agreement_margin,
                examples_seed=args.examples_seed,
                map_classes=args.map_classes,
            )
        )
    return 0
