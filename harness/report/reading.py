"""Reading an experiment's stored results (cells.csv, cell files) and the paper's tables, checked, in
percent."""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data import DATASETS
from harness.errors import DamagedFileError, UserError
from harness.records import CellStatus, EnvRecord, FinalRecord, Record, StatusRecord, read_record, record_dict
from harness.results import (
    CELLS_TABLE_COLUMNS,
    CellPaths,
    cells_table_mismatch,
    loss_label,
    read_pair_weights,
    write_cells_table,
)
from harness.stats import DEFAULT_AGREEMENT_MARGIN

PAPER_DIR = Path(str(resources.files("harness").joinpath("paper")))
"""The paper's tables, shipped as package data (``harness/paper/table{2,3,4,5}.csv``)."""

OPTIONAL_CELLS_COLUMNS = {"variant": "default"}
"""Columns of cells.csv older results may lack, with the value they stand for."""
REQUIRED_CELLS_COLUMNS = tuple(c for c in CELLS_TABLE_COLUMNS if c not in OPTIONAL_CELLS_COLUMNS)
PAPER_COLUMNS = (
    "table",
    "dataset",
    "method",
    "loss",
    "implemented",
    "similarities",
    "embedding_size",
    "k",
    "recall",
)
ORDER_TABLE = 2
"""The paper table whose row order orders the losses in every table and figure (the ablation)."""

DATASET_NAMES = {name: entry.title for name, entry in DATASETS.items()}
"""The title of each registered dataset, in the paper's order (the order of the report's tables)."""
WEIGHTS_ORDER = ("selected", "final")
FIGURE_FAMILY = ("dataset", "embedding_size", "variant")
"""One ablation, training-curve and pair-weight figure per value of these columns."""
TEST_FAMILY = ("dataset", "embedding_size", "variant", "weights")
"""Losses are compared with each other within one value of these columns (R@1, test set)."""
CELL_GROUP = ("dataset", "embedding_size", "variant", "row", "loss", "weights", "metric")
"""A cell of the result tables: everything but the seed (test split only)."""


def to_percent(fractions: pd.Series) -> pd.Series:
    """The one conversion of stored values (fractions in [0, 1]) to the percent the report shows."""
    return fractions * 100.0


def _not_results(where: Path, what: str) -> UserError:
    return UserError(
        f"{where}: {what}; expected a results directory results/<experiment>/ with a cells.csv written by "
        "`python -m harness.run` (run the experiment first, or pass its results directory)"
    )


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV of strings ('' for empty cells); unreadable -> UserError."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; expected a CSV header and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"{path}: cannot be read as CSV ({first}); expected a comma-separated table with a header line"
        ) from None


def _numbers(table: pd.DataFrame, column: str, path: Path, *, integer: bool, allow_empty: bool) -> pd.Series:
    """``column`` as numbers; '' and 'nan' are missing (allowed only with ``allow_empty``); else UserError."""
    text = table[column].str.strip().replace({"nan": "", "NaN": ""})
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "") | (values.isna() & (text == "") & (not allow_empty))
    if integer:
        bad |= values.notna() & (values != values.round())
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise UserError(
            f"{path}, line {line}: column {column!r} has {table[column].iloc[line - 2]!r}; "
            f"expected {'an integer' if integer else 'a number'}"
        )
    return values.astype("int64") if integer else values.astype(float)


def read_cells(experiment_dir: Path) -> pd.DataFrame:
    """cells.csv of an experiment, checked, with ``value`` in percent and a display ``row`` per loss.

    Raises UserError when the directory or cells.csv is missing, unreadable, lacks columns, has no
    rows, or holds a value that is not a fraction in [0, 1].
    """
    exp_dir = Path(experiment_dir)
    if not exp_dir.exists():
        raise _not_results(exp_dir, "no such directory")
    if not exp_dir.is_dir():
        raise _not_results(exp_dir, "not a directory")
    path = exp_dir / "cells.csv"
    mismatch = cells_table_mismatch(exp_dir)  # cross-check against cells/: a table cut short is rebuilt
    if mismatch:
        write_cells_table(exp_dir)
        print(f"note: {path}: did not match {exp_dir / 'cells'} ({mismatch}); rebuilt it", file=sys.stderr)
    if not path.is_file():
        raise _not_results(exp_dir, "no cells.csv here")
    table = _read_csv(path)
    missing = [c for c in REQUIRED_CELLS_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the columns of "
            f"docs/ARCHITECTURE.md ({', '.join(REQUIRED_CELLS_COLUMNS)})"
        )
    if table.empty:
        raise UserError(
            f"{path}: the table has no rows; expected one row per (cell, weights, split, metric) "
            "(has any cell of the experiment run?)"
        )
    for column, default in OPTIONAL_CELLS_COLUMNS.items():
        table[column] = table[column].replace("", default) if column in table.columns else default
    table["embedding_size"] = _numbers(table, "embedding_size", path, integer=True, allow_empty=False)
    table["seed"] = _numbers(table, "seed", path, integer=True, allow_empty=False)
    fractions = _numbers(table, "value", path, integer=False, allow_empty=True)
    outside = fractions.notna() & ~fractions.between(-1e-9, 1.0 + 1e-9)
    if outside.any():
        line = int(np.flatnonzero(outside.to_numpy())[0]) + 2
        raise UserError(
            f"{path}, line {line}: value {fractions.iloc[line - 2]!r} is not a fraction in [0, 1]; "
            "cells.csv stores fractions (the report converts to percent)"
        )
    table["value"] = to_percent(fractions)
    table["loss_label"] = table["loss_label"].where(table["loss_label"] != "", table["loss"].map(loss_label))
    table["row"] = row_labels(table)
    return table


def row_labels(table: pd.DataFrame) -> pd.Series:
    """``loss_label``, plus the preset (or loss) in brackets where one label names several configurations."""
    combos = table[["loss_label", "loss", "preset"]].drop_duplicates()
    labels = table["loss_label"].copy()
    for label, group in combos.groupby("loss_label"):
        if len(group) < 2:
            continue
        by = "preset" if group["preset"].nunique() == len(group) else "loss"
        mask = table["loss_label"] == label
        labels[mask] = label + " [" + table.loc[mask, by].replace("", "no preset") + "]"
    return labels


def table_loss_order(paper: pd.DataFrame, table: int = ORDER_TABLE) -> list[str]:
    """The losses of one paper table, in the order of its rows (empty without the paper's tables)."""
    return list(pd.unique(paper.loc[paper["table"] == table, "loss"]))


def row_order(rows: pd.DataFrame, loss_order: list[str]) -> list[str]:
    """The distinct ``row`` values of ``rows`` (columns row, loss): losses in ``loss_order`` first, in that
    order, then the rest; ties (one loss under several presets or labels) alphabetically."""
    first = rows.drop_duplicates("row").set_index("row")["loss"]
    rank = {loss: i for i, loss in enumerate(loss_order)}
    return sorted(first.index, key=lambda row: (rank.get(first[row], len(rank)), row))


def load_paper_tables(paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    """All ``table*.csv`` of ``paper_dir`` in one table (recall in percent); empty if there are none."""
    frames = []
    for path in sorted(Path(paper_dir).glob("table*.csv")):
        table = _read_csv(path)
        missing = [c for c in PAPER_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(PAPER_COLUMNS)}"
            )
        for column in ("table", "embedding_size", "k"):
            table[column] = _numbers(table, column, path, integer=True, allow_empty=False).astype(int)
        table["recall"] = _numbers(table, "recall", path, integer=False, allow_empty=False)
        table["implemented"] = table["implemented"].str.strip().str.lower() == "true"
        frames.append(table[list(PAPER_COLUMNS)])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PAPER_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def paper_reference(paper: pd.DataFrame) -> pd.DataFrame:
    """One paper value per (dataset, loss, embedding_size, k) of the implemented methods.

    A value printed in several tables (Cars MS^64 in Tables 2 and 3) appears once, with ``tables``
    listing them; tables that disagree raise UserError.
    """
    keys = ["dataset", "loss", "embedding_size", "k"]
    implemented = paper[paper["implemented"].astype(bool)]
    if implemented.empty:
        return pd.DataFrame(columns=[*keys, "recall", "tables"])
    grouped = implemented.groupby(keys, as_index=False).agg(
        recall=("recall", "first"),
        distinct=("recall", "nunique"),
        tables=("table", lambda t: ", ".join(str(v) for v in sorted(set(t)))),
    )
    clash = grouped[grouped["distinct"] > 1]
    if len(clash):
        first = clash.iloc[0]
        raise UserError(
            f"paper tables {first['tables']} give different values for {first['loss']} on "
            f"{first['dataset']} at embedding size {first['embedding_size']}, K={first['k']}; "
            "fix harness/paper/"
        )
    return grouped.drop(columns="distinct")


def with_k(table: pd.DataFrame) -> pd.DataFrame:
    """The recall@K rows, with an integer ``k`` column."""
    recall = table[table["metric"].str.fullmatch(r"recall@\d+")]
    return recall.assign(k=recall["metric"].str.slice(7).astype(int))


@dataclass
class CellFiles:
    """What the figures need from the cells' own files, and what could not be read."""

    train_log: pd.DataFrame
    evals: pd.DataFrame
    weights: pd.DataFrame
    finals: dict[str, dict]
    """cell id -> its final.json, else its status.json (the fields the file holds)."""
    configs: dict[str, dict] = field(default_factory=dict)
    """cell id -> its config.json (cells whose file is missing or damaged are absent)."""
    envs: dict[str, dict] = field(default_factory=dict)
    """cell id -> its env.json (device, packages)."""
    problems: dict[str, list[str]] = field(default_factory=dict)
    """file name -> the finished cells where it is missing or unreadable."""


CELL_RECORDS: dict[str, type[Record]] = {
    "final.json": FinalRecord,
    "status.json": StatusRecord,
    "config.json": Record,  # the whole resolved config, any JSON object (the report reads a few fields)
    "env.json": EnvRecord,
}
"""The cell files the report reads, with the record each is checked as (:mod:`harness.records`)."""


def _cell_json(
    folder: Path,
    problems: dict[str, list[str]],
    cell_id: object,
    names: tuple[str, ...] = ("final.json", "status.json"),
) -> dict | None:
    """The first of ``names`` a cell has, checked and as a mapping; a damaged one is listed in ``problems``
    and skipped."""
    for name in names:
        try:
            record = read_record(folder / name, CELL_RECORDS[name])
        except (DamagedFileError, OSError) as err:
            problems.setdefault(name, []).append(_problem(cell_id, err))
            continue
        if record is not None:
            return record_dict(record)
    return None


def read_cell_files(experiment_dir: Path, cells: pd.DataFrame) -> CellFiles:
    """train_log.csv, evals.csv (R@1), pair_weights.npz of the finished cells and final.json of all.

    A missing or unreadable file is not an error: it is listed in ``problems`` and the figures that
    need it are drawn from the other cells (or skipped).
    """
    meta = cells.drop_duplicates("cell_id").set_index("cell_id")
    logs, evals, weights = [], [], []
    problems: dict[str, list[str]] = {}
    finals: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    envs: dict[str, dict] = {}
    for cell_id, info in meta.iterrows():
        folder = Path(experiment_dir) / "cells" / str(cell_id)
        for into, names in (
            (finals, ("final.json", "status.json")),
            (configs, ("config.json",)),
            (envs, ("env.json",)),
        ):
            data = _cell_json(folder, problems, cell_id, names)
            if data is not None:
                into[str(cell_id)] = data
        if info["status"] != CellStatus.FINISHED:
            continue
        tags = {
            "cell_id": cell_id,
            **{c: info[c] for c in ("row", "dataset", "embedding_size", "variant", "seed")},
        }
        try:
            log = pd.read_csv(folder / "train_log.csv")
            log["iteration"], log["loss"] = log["iteration"].astype(float), log["loss"].astype(float)
            logs.append(log.assign(**tags))
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as err:
            problems.setdefault("train_log.csv", []).append(_problem(cell_id, err))
        try:
            ev = pd.read_csv(folder / "evals.csv")
            ev = ev[ev["metric"] == "recall@1"]
            evals.append(ev.assign(value=to_percent(ev["value"].astype(float)), **tags))
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as err:
            problems.setdefault("evals.csv", []).append(_problem(cell_id, err))
        try:
            arrays = read_pair_weights(CellPaths(folder))  # the cell's own file, or a reference's aggregate
            for key, kind in (("pos", "positive"), ("neg", "negative")):
                weights.append(
                    pd.DataFrame(
                        {"weight": np.asarray(arrays[key], dtype=float).ravel(), "kind": kind, **tags}
                    )
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            problems.setdefault("pair_weights.npz", []).append(_problem(cell_id, err))
    return CellFiles(_concat(logs), _concat(evals), _concat(weights), finals, configs, envs, problems)


def _problem(cell_id: object, err: Exception) -> str:
    return f"{cell_id} ({'missing' if isinstance(err, FileNotFoundError) else type(err).__name__})"


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["row", "seed", "iteration"])
    )


REFERENCE_ROOT = Path(__file__).resolve().parents[2] / "results" / "reference"
"""Committed reference runs of a checkout: ``results/reference/<experiment>/``."""
DEFAULT_MARGIN = 2.0
"""Equivalence margin (points) for "reproduced within +-m points"."""


DEFAULT_MAP_CLASSES = 10
"""Test classes in an embedding map, unless the report is told otherwise."""


@dataclass(frozen=True)
class ReportOptions:
    """The report's choices a user can make on the command line."""

    all_pairs: bool = False
    """Compare every pair of losses instead of the control (MS) against each other row."""
    margin: float = DEFAULT_MARGIN
    """Equivalence margin in points for the paper verdicts."""
    reference_dir: Path | None = None
    """A committed reference run to check agreement with (None: none)."""
    agreement_margin: float = DEFAULT_AGREEMENT_MARGIN
    """Points of Recall@1 within which a row agrees with the reference run (TOST)."""
    examples_seed: int | None = None
    """The seed of the cells drawn in the retrieval examples and embedding maps (None: the control's
    first)."""
    map_classes: int = DEFAULT_MAP_CLASSES
    """Test classes drawn in the embedding maps."""


@dataclass
class ReportContext:
    """Everything the report's sections and figures share."""

    exp_dir: Path
    cells: pd.DataFrame
    finished: pd.DataFrame
    reference: pd.DataFrame
    paper: pd.DataFrame
    paper_note: str
    files: CellFiles
    order: list[str]
    """Every row of the experiment, in report order (the paper's Table 2 first)."""
    weights_titles: dict[str, str]
    many_variants: bool
    coincide: bool = False
    """Whether selected and final weights give the same results in every cell (then only final is kept)."""
    options: ReportOptions = field(default_factory=lambda: ReportOptions())

    def ordered(self, rows: object) -> list[str]:
        """The distinct rows among ``rows``, in report order."""
        present = set(rows)  # type: ignore[call-overload]
        return [row for row in self.order if row in present]
