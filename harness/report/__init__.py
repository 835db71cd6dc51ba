"""`python -m harness.report DIR`: report.md and figures of one experiment, from its stored runs only.

Reads ``DIR/cells.csv`` (and each cell's ``final.json``, ``train_log.csv``, ``evals.csv``,
``pair_weights.npz``) and the paper's tables (``results/paper/``) in :mod:`.reading`, computes the
statistics of :mod:`harness.stats` into the tables of :mod:`.tables`, draws the figures of
:mod:`.figures` (drawing in :mod:`.plots`) and writes ``DIR/report.md`` (:mod:`.sections`) plus
``DIR/figures/*.png|svg``. No training, no model. Values in cells.csv are fractions; they are
converted to percent once, in :func:`to_percent`, when read; everything after that is percent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.report.reading import (
    CELL_GROUP,
    DATASET_NAMES,
    FIGURE_FAMILY,
    PAPER_DIR,
    TEST_FAMILY,
    WEIGHTS_ORDER,
    CellFiles,
    ReportContext,
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

__all__ = [
    "CELL_GROUP", "DATASET_NAMES", "FIGURE_FAMILY", "PAPER_DIR", "TEST_FAMILY", "WEIGHTS_ORDER", "CellFiles",
    "ReportContext", "load_context", "load_paper_tables", "main", "paper_reference", "read_cell_files",
    "read_cells", "row_labels", "row_order", "table_loss_order", "to_percent", "write_report",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.report DIR [--paper DIR]``; prints the report's path."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Write report.md and figures/ for one experiment from its stored results (no training).",
    )
    parser.add_argument("experiment_dir", type=Path, help="results directory of one experiment (has cells.csv)")
    parser.add_argument("--paper", type=Path, default=None, help=f"the paper's tables (default: {PAPER_DIR})")
    args = parser.parse_args(argv)
    print(write_report(args.experiment_dir, paper_dir=args.paper))
    return 0
