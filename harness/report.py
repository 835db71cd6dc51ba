"""`python -m harness.report DIR`: report.md and figures of one experiment, from its stored runs only.

Reads ``DIR/cells.csv`` (and each cell's ``final.json``, ``train_log.csv``, ``evals.csv``,
``pair_weights.npz``), the paper's tables (``results/paper/``), computes the statistics of
:mod:`harness.stats` and writes ``DIR/report.md`` plus ``DIR/figures/*.png|svg`` (:mod:`harness.plots`).
No training, no model. Values in cells.csv are fractions; they are converted to percent once, in
:func:`to_percent`, when read; everything after that is percent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import plots, stats
from harness.errors import UserError, cli_main

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
"""The paper's tables in a checkout (``results/paper/table{2,3,4,5}.csv``)."""

CELLS_COLUMNS = (
    "experiment", "cell_id", "loss", "loss_label", "preset", "dataset", "embedding_size", "seed",
    "status", "select_on", "weights", "split", "metric", "value",
)  # fmt: skip
"""Columns cells.csv must have (docs/ARCHITECTURE.md); ``variant`` is optional (default ``default``)."""
PAPER_COLUMNS = ("table", "dataset", "method", "loss", "implemented", "similarities", "embedding_size", "k", "recall")

DATASET_NAMES = {
    "cub": "CUB-200-2011", "cars": "Cars-196", "sop": "Stanford Online Products", "inshop": "In-Shop",
    "glyphs": "glyphs (synthetic, no paper numbers)",
}  # fmt: skip
ABLATION_ORDER = (
    "Binomial", "LiftedStruct*", "MS mining", "BinLifted", "MS weighting", "Binomial_m", "LiftedStruct*_m", "MS",
)  # fmt: skip
"""The rows of the paper's Table 2, in its order (also the order of losses in tables and figures)."""
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


# ------------------------------------------------------------------------------------------ reading


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
        raise UserError(f"{path}: cannot be read as CSV ({first}); expected a comma-separated table with a header line") from None


def _numbers(table: pd.DataFrame, column: str, path: Path, *, integer: bool, allow_empty: bool) -> pd.Series:
    """``column`` as numbers; '' and 'nan' are missing (allowed only with ``allow_empty``); else UserError."""
    text = table[column].str.strip().replace({"nan": "", "NaN": ""})
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "") | (values.isna() & (text == "") & (not allow_empty))
    if integer:
        bad |= values.notna() & (values != values.round())
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise UserError(f"{path}, line {line}: column {column!r} has {table[column].iloc[line - 2]!r}; "
                        f"expected {'an integer' if integer else 'a number'}")  # fmt: skip
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
    if not path.is_file():
        raise _not_results(exp_dir, "no cells.csv here")
    table = _read_csv(path)
    missing = [c for c in CELLS_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected the columns of "
                        f"docs/ARCHITECTURE.md ({', '.join(CELLS_COLUMNS)})")  # fmt: skip
    if table.empty:
        raise UserError(f"{path}: the table has no rows; expected one row per (cell, weights, split, metric) "
                        "(has any cell of the experiment run?)")  # fmt: skip
    if "variant" not in table.columns:
        table["variant"] = "default"
    table["variant"] = table["variant"].replace("", "default")
    table["embedding_size"] = _numbers(table, "embedding_size", path, integer=True, allow_empty=False)
    table["seed"] = _numbers(table, "seed", path, integer=True, allow_empty=False)
    fractions = _numbers(table, "value", path, integer=False, allow_empty=True)
    outside = fractions.notna() & ~fractions.between(-1e-9, 1.0 + 1e-9)
    if outside.any():
        line = int(np.flatnonzero(outside.to_numpy())[0]) + 2
        raise UserError(f"{path}, line {line}: value {fractions.iloc[line - 2]!r} is not a fraction in [0, 1]; "
                        "cells.csv stores fractions (the report converts to percent)")  # fmt: skip
    table["value"] = to_percent(fractions)
    table["row"] = _row_labels(table)
    return table


def _row_labels(table: pd.DataFrame) -> pd.Series:
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


def _row_order(rows: Iterable[str]) -> list[str]:
    """Table 2 order first (by the label before any bracket), then the rest alphabetically."""
    def key(row: str) -> tuple[int, str]:
        base = row.split(" [")[0]
        return (ABLATION_ORDER.index(base) if base in ABLATION_ORDER else len(ABLATION_ORDER), row)

    return sorted(set(rows), key=key)


def load_paper_tables(paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    """All ``table*.csv`` of ``paper_dir`` in one table (recall in percent); empty if there are none."""
    frames = []
    for path in sorted(Path(paper_dir).glob("table*.csv")):
        table = _read_csv(path)
        missing = [c for c in PAPER_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(PAPER_COLUMNS)}")
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
        recall=("recall", "first"), distinct=("recall", "nunique"),
        tables=("table", lambda t: ", ".join(str(v) for v in sorted(set(t)))),
    )  # fmt: skip
    clash = grouped[grouped["distinct"] > 1]
    if len(clash):
        first = clash.iloc[0]
        raise UserError(f"paper tables {first['tables']} give different values for {first['loss']} on "
                        f"{first['dataset']} at embedding size {first['embedding_size']}, K={first['k']}; fix results/paper/")  # fmt: skip
    return grouped.drop(columns="distinct")


def _with_k(table: pd.DataFrame) -> pd.DataFrame:
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
    problems: dict[str, list[str]] = field(default_factory=dict)
    """file name -> the finished cells where it is missing or unreadable."""


def read_cell_files(experiment_dir: Path, cells: pd.DataFrame) -> CellFiles:
    """train_log.csv, evals.csv (R@1), pair_weights.npz of the finished cells and final.json of all.

    A missing or unreadable file is not an error: it is listed in ``problems`` and the figures that
    need it are drawn from the other cells (or skipped).
    """
    meta = cells.drop_duplicates("cell_id").set_index("cell_id")
    logs, evals, weights, finals, problems = [], [], [], {}, {}
    for cell_id, info in meta.iterrows():
        folder = Path(experiment_dir) / "cells" / str(cell_id)
        final = _read_json(folder / "final.json") or _read_json(folder / "status.json")
        if final is not None:
            finals[str(cell_id)] = final
        if info["status"] != "finished":
            continue
        tags = {"cell_id": cell_id, **{c: info[c] for c in ("row", "dataset", "embedding_size", "variant", "seed")}}
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
            with (folder / "pair_weights.npz").open("rb") as handle, np.load(handle, allow_pickle=False) as npz:
                for key, kind in (("pos", "positive"), ("neg", "negative")):
                    weights.append(pd.DataFrame({"weight": np.asarray(npz[key], dtype=float).ravel(), "kind": kind,
                                                 **tags}))  # fmt: skip
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            problems.setdefault("pair_weights.npz", []).append(_problem(cell_id, err))
    return CellFiles(_concat(logs), _concat(evals), _concat(weights), finals, problems)


def _problem(cell_id: object, err: Exception) -> str:
    return f"{cell_id} ({'missing' if isinstance(err, FileNotFoundError) else type(err).__name__})"


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["row", "seed", "iteration"])


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------- formatting


def _esc(text: object) -> str:
    """Markdown-safe table text (loss names contain * and _)."""
    return re.sub(r"([*_|\\])", r"\\\1", str(text))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x: float, digits: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "+inf" if x > 0 else "−inf"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    if p == 0:
        return "0"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _mean_ci(mean: float, low: float, high: float, sign: bool = False) -> str:
    if math.isnan(low):
        return _num(mean, sign=sign)
    return f"{_num(mean, sign=sign)} [{_num(low, sign=sign)}, {_num(high, sign=sign)}]"


def _size_variant(size: object, variant: str, many_variants: bool) -> str:
    return f"d={size}" + (f", variant {_esc(variant)}" if many_variants else "")


# -------------------------------------------------------------------------------------------- report


@dataclass
class _Context:
    """Everything the sections share."""

    exp_dir: Path
    cells: pd.DataFrame
    finished: pd.DataFrame
    reference: pd.DataFrame
    paper: pd.DataFrame
    paper_note: str
    files: CellFiles
    order: list[str]
    weights_titles: dict[str, str]
    many_variants: bool


def _selection_words(cells: pd.DataFrame, finals: dict[str, dict]) -> tuple[dict[str, str], str]:
    """Titles for the two kinds of weights, and the report's paragraph on checkpoint selection."""
    per_cell = cells.drop_duplicates("cell_id").set_index("cell_id")["select_on"]
    splits = sorted(set(per_cell))
    metrics = sorted({str(f.get("select_metric")) for f in finals.values() if f.get("select_metric")}) or ["recall@1"]
    metric = "/".join(metrics)
    where = {"val": "the validation split", "test": "the test split"}
    if splits == ["val"]:
        selected = f"validation-selected weights (best {metric} on val)"
    elif splits == ["test"]:
        selected = f"test-selected weights (best {metric} on test: optimistic)"
    else:
        by_variant = cells.drop_duplicates("cell_id").groupby("variant")["select_on"].agg(lambda s: "/".join(sorted(set(s))))
        selected = (f"selected weights (best {metric} on the split each variant selects on: "
                    + "; ".join(f"{_esc(v)} on {s}" for v, s in by_variant.items()) + ")")  # fmt: skip
    lines = [
        f"- Checkpoint selection (`select_on`): {', '.join(f'`{s}` ({(per_cell == s).sum()} cells)' for s in splits)}.",
        f"- **selected** weights: the checkpoint with the best {metric} on "
        f"{' / '.join(where.get(s, s) for s in splits)} during training; **final** weights: the last iteration.",
        "- Every result table is on the **test set** and says which weights it shows; both are reported.",
    ]
    if "test" in splits:
        lines.append("- Selecting on the test split (as the paper's official code does) makes the *selected* test "
                     "numbers optimistic; the *final* weights are not selected on test data.")  # fmt: skip
    return {"selected": selected, "final": "final weights (last iteration)"}, "\n".join(lines)


def _runs_section(ctx: _Context) -> str:
    per_cell = ctx.cells.drop_duplicates("cell_id")
    counts = per_cell["status"].value_counts()
    lines = ["## Runs", ""]
    lines.append(f"- cells: {len(per_cell)} ({', '.join(f'{s}: {n}' for s, n in counts.items())})")
    for column, name in (("dataset", "datasets"), ("embedding_size", "embedding sizes"), ("row", "losses"),
                         ("seed", "seeds"), ("preset", "presets"), ("variant", "variants")):  # fmt: skip
        values = [v for v in per_cell[column].drop_duplicates().tolist() if v != ""]
        if column == "row":
            values = _row_order(values)
        lines.append(f"- {name}: {', '.join(_esc(v) for v in values) or '–'}")
    not_done = per_cell[~per_cell["status"].isin(["finished", "failed"])]
    if len(not_done):
        lines.append(f"- {len(not_done)} cell(s) not finished ({', '.join(sorted(set(not_done['status'])))}): "
                     "not in the statistics; rerun the report when they are done.")  # fmt: skip
    dupes = ctx.finished.duplicated(["row", "dataset", "embedding_size", "variant", "seed", "weights", "split",
                                     "metric"]).sum()  # fmt: skip
    if dupes:
        lines.append(f"- {dupes} result(s) repeat a (loss, dataset, size, variant, seed): they count as extra runs "
                     "in the per-cell statistics and are averaged per seed in the paired tests.")  # fmt: skip
    failed = per_cell[per_cell["status"] == "failed"]
    if len(failed):
        rows = [[_esc(r.cell_id), _esc(r.row), r.dataset, r.embedding_size, r.seed,
                 _esc(ctx.files.finals.get(r.cell_id, {}).get("reason") or "–")] for r in failed.itertuples()]  # fmt: skip
        lines += ["", "Failed cells (not in the statistics):", "",
                  _table(["cell", "loss", "dataset", "size", "seed", "reason"], rows)]  # fmt: skip
    for name, where in ctx.files.problems.items():
        more = f" and {len(where) - 6} more" if len(where) > 6 else ""
        lines.append(f"- `{name}` missing or unreadable in {len(where)} finished cell(s), left out of the figures: "
                     + ", ".join(_esc(w) for w in where[:6]) + more)  # fmt: skip
    return "\n".join(lines)


def _comparison(ctx: _Context) -> pd.DataFrame:
    """Per test-set cell and metric: summary over seeds, and for recall@K the paper value and verdict."""
    test = ctx.finished[ctx.finished["split"] == "test"]
    summary = stats.summarize(test, CELL_GROUP)
    recall = _with_k(test)
    if ctx.reference.empty or recall.empty:
        return summary.assign(paper=math.nan, tables="", diff=math.nan, diff_ci_low=math.nan, diff_ci_high=math.nan,
                              p=math.nan, verdict="")  # fmt: skip
    with_paper = recall.merge(ctx.reference, on=["dataset", "loss", "embedding_size", "k"], how="left")
    tested = stats.compare_to_reference(with_paper.rename(columns={"recall": "paper"}), CELL_GROUP, "paper")
    tables = with_paper.drop_duplicates(list(CELL_GROUP))[[*CELL_GROUP, "tables"]]
    columns = [*CELL_GROUP, "paper", "diff", "diff_ci_low", "diff_ci_high", "p", "verdict"]
    return summary.merge(tested[columns], on=list(CELL_GROUP), how="left").merge(tables, on=list(CELL_GROUP), how="left")


def _order_frame(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows in report order: dataset, size, variant, loss (Table 2 order), K."""
    ranked = frame.assign(_ds=frame["dataset"].map({d: i for i, d in enumerate(_datasets(frame))}),
                          _rank=frame["row"].map({row: i for i, row in enumerate(order)}))  # fmt: skip
    keys = ["_ds", "embedding_size", "variant", "_rank", *(["k"] if "k" in frame else [])]
    return ranked.sort_values(keys).drop(columns=["_ds", "_rank"])


def _paper_section(ctx: _Context, comparison: pd.DataFrame) -> str:
    recall = _with_k(comparison)
    lines = [
        "## Results against the paper (Recall@K, test set, %)", "",
        "Ours: mean over seeds [95% t confidence interval], n = seeds. Paper: the value printed in the table(s) "
        "named. Diff = ours − paper [95% CI]; p: two-sided one-sample t-test of our seeds against the paper's "
        "value. Verdict: **reproduced** = the paper's value lies inside our 95% CI; **below** / **above** = our "
        "whole CI lies below / above it; *no test (1 seed)* = a single seed gives no interval and no test.",
    ]  # fmt: skip
    if ctx.paper_note:
        lines += ["", ctx.paper_note]
    for weights in WEIGHTS_ORDER:
        part = recall[recall["weights"] == weights]
        if part.empty:
            continue
        verdicts = part["verdict"].replace("", np.nan).dropna().value_counts()
        lines += ["", f"### {ctx.weights_titles[weights]}", ""]
        if len(verdicts):
            lines += ["Verdicts: " + ", ".join(f"{v}: {n}" for v, n in verdicts.items()) + ".", ""]
        for dataset in _datasets(part):
            rows = []
            for r in _order_frame(part[part["dataset"] == dataset], ctx.order).itertuples():
                has_paper = isinstance(r.paper, float) and not math.isnan(r.paper)
                rows.append([
                    _size_variant(r.embedding_size, r.variant, ctx.many_variants), _esc(r.row), r.k, r.n,
                    _mean_ci(r.mean, r.ci_low, r.ci_high),
                    f"{r.paper:.1f} (T{r.tables})" if has_paper else "–",
                    _mean_ci(r.diff, r.diff_ci_low, r.diff_ci_high, sign=True) if has_paper else "–",
                    _p(r.p) if has_paper else "–",
                    r.verdict if has_paper else "no paper value",
                ])  # fmt: skip
            lines += [f"**{DATASET_NAMES.get(dataset, dataset)}**", "",
                      _table(["size", "loss", "K", "n", "ours % [95% CI]", "paper %", "diff [95% CI]", "p",
                              "verdict"], rows), ""]  # fmt: skip
    return "\n".join(lines).rstrip()


def _datasets(frame: pd.DataFrame) -> list[str]:
    present = set(frame["dataset"])
    return [d for d in DATASET_NAMES if d in present] + sorted(present - set(DATASET_NAMES))


def _other_metrics_section(ctx: _Context, comparison: pd.DataFrame) -> str:
    others = comparison[~comparison["metric"].str.startswith("recall@")]
    if others.empty:
        return ""
    metrics = sorted(set(others["metric"]))
    lines = ["## Other metrics (test set, %, mean [95% CI])", "", "The paper reports Recall@K only.", ""]
    for weights in WEIGHTS_ORDER:
        part = others[others["weights"] == weights]
        if part.empty:
            continue
        lines += [f"### {ctx.weights_titles[weights]}", ""]
        keys = ["dataset", "embedding_size", "variant", "row"]
        rows = []
        for key, group in _order_frame(part, ctx.order).groupby(keys, sort=False):
            values = group.set_index("metric")
            rows.append([DATASET_NAMES.get(key[0], key[0]).split(" (")[0],
                         _size_variant(key[1], key[2], ctx.many_variants), _esc(key[3]), int(values["n"].max()),
                         *(_mean_ci(*values.loc[m, ["mean", "ci_low", "ci_high"]]) if m in values.index else "–"
                           for m in metrics)])  # fmt: skip
        lines += [_table(["dataset", "size", "loss", "n", *metrics], rows), ""]
    return "\n".join(lines).rstrip()


def _table2_by_row(ctx: _Context, rows: Iterable[str], k: int) -> pd.Series:
    """The paper's Table 2 value at K for each of our rows whose loss is one of Table 2's rows."""
    table2 = ctx.paper[(ctx.paper["table"] == 2) & (ctx.paper["k"] == k) & ctx.paper["implemented"].astype(bool)]
    by_loss = dict(zip(table2["loss"], table2["recall"], strict=True))
    loss_of = ctx.finished.drop_duplicates("row").set_index("row")["loss"]
    return pd.Series({row: by_loss[loss_of[row]] for row in rows if loss_of.get(row) in by_loss}, dtype=float)


def _between_losses_section(ctx: _Context, comparison: pd.DataFrame) -> str:
    test = ctx.finished[ctx.finished["split"] == "test"]
    r1 = test[test["metric"] == "recall@1"]
    lines = [
        "## Between losses (Recall@1, test set)", "",
        "Per dataset, embedding size and weights. Pairs: paired t-test and Wilcoxon signed-rank test over the "
        "seeds both losses have, Holm-corrected over the pairs of the block (Wilcoxon cannot reach p < 0.25 "
        "with 3 seeds, nor p < 0.0625 with 5). Friedman: all losses at once, over the seeds all of them have. "
        "Ranking: Kendall's tau between our mean Recall@K per loss and the paper's Table 2 (Cars-196, "
        "embedding 64) over the Table 2 rows we ran; for other datasets and sizes it compares rankings only.",
    ]  # fmt: skip
    if r1.empty:
        return "\n".join([*lines, "", "No finished Recall@1 results on the test set."])
    pairs = stats.pairwise_comparisons(r1, TEST_FAMILY, treatment="row", order=ctx.order)
    friedman = stats.friedman_by_family(r1, TEST_FAMILY, treatment="row")
    recall = _with_k(comparison)
    blocks = r1.groupby(list(TEST_FAMILY), sort=True)
    for key in sorted(blocks.groups, key=lambda k: (*k[:3], WEIGHTS_ORDER.index(k[3]))):
        block = blocks.get_group(key)
        dataset, size, variant, weights = key
        present = _row_order(block["row"])
        lines += ["", f"### {DATASET_NAMES.get(dataset, dataset)}, {_size_variant(size, variant, ctx.many_variants)}, "
                      f"{ctx.weights_titles[weights]}", ""]  # fmt: skip
        if len(present) < 2:
            lines.append(f"Only one loss ({_esc(present[0])}): nothing to compare.")
            continue
        where = dict(zip(TEST_FAMILY, key, strict=True))
        f = _select(friedman, **where).iloc[0]
        lines.append(f"- Friedman over {f.k} losses and {f.n} seeds: "
                     + (f"chi² = {f.statistic:.2f}, p = {_p(f.p)}" if not f.note else
                        f"{f.note} (treatments = losses, blocks = seeds)"))  # fmt: skip
        rank_rows = []
        for k in (1, 2, 4, 8):
            ours = _select(recall, k=k, **where)
            if ours.empty:
                continue
            agreement = stats.rank_agreement(ours.set_index("row")["mean"], _table2_by_row(ctx, ours["row"], k))
            rank_rows.append([k, agreement.n, _num(agreement.tau, 3), _p(agreement.p), agreement.note or "–"])
        if rank_rows and ctx.paper.empty:
            lines.append("- Ranking against Table 2: no paper tables found.")
        elif rank_rows:
            lines += ["- Ranking against the paper's Table 2:", "",
                      _table(["K", "rows in common", "Kendall tau", "p", "note"], rank_rows)]  # fmt: skip
        mine = _select(pairs, **where)
        rows = [[_esc(p.a), _esc(p.b), p.n, _num(p.mean_diff, sign=True), _p(p.p_t), _p(p.p_t_holm), _p(p.p_w),
                 _p(p.p_w_holm)] for p in mine.itertuples()]  # fmt: skip
        lines += ["", "- Pairs:", "", _table(["A", "B", "seeds", "mean A − B (pts)", "paired t p", "Holm", "Wilcoxon p", "Holm"], rows)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- figures


@dataclass
class _Figure:
    title: str
    files: list[Path]
    caption: str = ""


@dataclass
class _Skipped:
    title: str
    reason: str


def _slug(*parts: object) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-") for p in parts if str(p) != "")


def _family_name(ctx: _Context, dataset: str, size: object, variant: str) -> str:
    name = DATASET_NAMES.get(dataset, dataset).split(" (")[0]
    return f"{name}, embedding {size}" + (f", variant {variant}" if ctx.many_variants else "")


def _figures(ctx: _Context, comparison: pd.DataFrame) -> list[_Figure | _Skipped]:
    figures_dir = ctx.exp_dir / "figures"
    palette = plots.label_palette(ctx.order)
    out: list[_Figure | _Skipped] = []
    test = ctx.finished[ctx.finished["split"] == "test"]
    recall = _with_k(comparison)
    reference = _reference_by_row(ctx)
    if test.empty:
        return [_Skipped("all figures", "no finished cell has test-set results")]
    families = list(test.groupby(list(FIGURE_FAMILY), sort=True))
    for (dataset, size, variant), block in families:
        name = _family_name(ctx, dataset, size, variant)
        out.append(_ablation_figure(ctx, block, reference, name, figures_dir / _slug("ablation", dataset, f"d{size}",
                                                                                        _variant_slug(variant))))  # fmt: skip
    for key, _ in families:
        out.append(_recall_figure(ctx, recall, reference, palette, key, _family_name(ctx, *key), figures_dir))
    out += _size_figures(ctx, recall, reference, palette, figures_dir)
    out += _cell_file_figures(ctx, palette, figures_dir)
    return out


def _variant_slug(variant: str) -> str:
    return "" if variant == "default" else variant


def _reference_by_row(ctx: _Context) -> pd.DataFrame:
    """The paper's values for each of our rows (by its loss) at every dataset, size and K the paper has."""
    loss_of = ctx.finished.drop_duplicates("row")[["row", "loss"]]
    return ctx.reference.merge(loss_of, on="loss")


def _tables_of(paper: pd.DataFrame) -> str:
    """'2, 3' for the paper tables a set of reference rows comes from."""
    return ", ".join(sorted({t for tables in paper["tables"] for t in str(tables).split(", ")}, key=int))


def _select(frame: pd.DataFrame, **values: object) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in values.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def _ablation_figure(ctx: _Context, block: pd.DataFrame, reference: pd.DataFrame, name: str, stem: Path):
    title = f"Ablation: {name}"
    r1 = block[block["metric"] == "recall@1"]
    present = _row_order(r1["row"])
    if len(present) < 2:
        return _Skipped(title, f"only one loss ({present[0] if present else 'none'}) has test Recall@1 here")
    dataset, size = block["dataset"].iloc[0], block["embedding_size"].iloc[0]
    paper = _select(reference, dataset=dataset, embedding_size=size, k=1)
    paper = paper[paper["row"].isin(present)][["row", "recall"]]
    paper = paper.assign(_rank=paper["row"].map(present.index)).sort_values("_rank").drop(columns="_rank")
    weights = {w: ctx.weights_titles[w].split(" (")[0] for w in WEIGHTS_ORDER if (r1["weights"] == w).any()}
    files = plots.ablation_bars(
        r1[["row", "weights", "value"]], paper, order=present, weights_labels=weights,
        title=f"{title} (mean over seeds, 95% t CI)", ylabel="Recall@1 on the test set (%)", stem=stem,
    )  # fmt: skip
    caption = ("Paper values (black markers): " + ", ".join(f"{_esc(r)} {v:.1f}" for r, v in zip(paper['row'], paper['recall'], strict=True))
               + "." if len(paper) else "No paper values for this dataset and size.")  # fmt: skip
    return _Figure(title, files, caption + " The y axis does not start at 0.")


def _recall_figure(ctx, recall, reference, palette, key, name, figures_dir):
    dataset, size, variant = key
    title = f"Recall@K: {name}"
    ours = _select(recall, dataset=dataset, embedding_size=size, variant=variant)
    if ours["k"].nunique() < 2:
        return _Skipped(title, "fewer than two K values measured")
    paper = _select(reference, dataset=dataset, embedding_size=size)
    paper = paper[paper["row"].isin(set(ours["row"])) & paper["k"].isin(set(ours["k"]))]
    weights = [w for w in WEIGHTS_ORDER if (ours["weights"] == w).any()]
    paper_panels = pd.concat([paper.assign(weights=w) for w in weights], ignore_index=True)
    files = plots.recall_curves(
        ours, paper_panels, panels=[(w, ctx.weights_titles[w].split(" (")[0]) for w in weights],
        panel_column="weights", order=_row_order(ours["row"]), palette=palette, title=title,
        stem=figures_dir / _slug("recall_at_k", dataset, f"d{size}", _variant_slug(variant)),
    )  # fmt: skip
    caption = (f"Dashed: the paper (Table(s) {_tables_of(paper)})." if len(paper) else
               "No paper values for these losses at this dataset and size.")  # fmt: skip
    return _Figure(title, files, caption)


def _size_figures(ctx, recall, reference, palette, figures_dir) -> list[_Figure | _Skipped]:
    out: list[_Figure | _Skipped] = []
    r1 = recall[recall["k"] == 1]
    for (dataset, variant), block in r1.groupby(["dataset", "variant"], sort=True):
        name = DATASET_NAMES.get(dataset, dataset).split(" (")[0] + (f", variant {variant}" if ctx.many_variants else "")
        title = f"Recall@1 against embedding size: {name}"
        sizes = sorted(set(block["embedding_size"]))
        if len(sizes) < 2:
            out.append(_Skipped(title, f"no embedding-size sweep in this experiment (size {sizes[0]} only)"))
            continue
        paper = _select(reference, dataset=dataset, k=1)
        paper = paper[paper["row"].isin(set(block["row"]))]
        note = ("The paper gives its embedding-size study (Fig. 3) only as a figure; the paper points are the "
                f"printed values of Table(s) {_tables_of(paper)} at the sizes it reports." if len(paper) else
                "No paper values for these losses on this dataset.")  # fmt: skip
        weights = [w for w in WEIGHTS_ORDER if (block["weights"] == w).any()]
        files = plots.embedding_size_curves(
            block, paper, panels=[(w, ctx.weights_titles[w].split(" (")[0]) for w in weights], panel_column="weights",
            order=_row_order(block["row"]), palette=palette, title=title, note=note,
            stem=figures_dir / _slug("embedding_size", dataset, _variant_slug(variant)),
        )  # fmt: skip
        out.append(_Figure(title, files, note))
    return out


def _cell_file_figures(ctx: _Context, palette, figures_dir: Path) -> list[_Figure | _Skipped]:
    out: list[_Figure | _Skipped] = []
    logs, evals, weights = ctx.files.train_log, ctx.files.evals, ctx.files.weights
    for key, _ in ctx.finished.groupby(list(FIGURE_FAMILY), sort=True):
        dataset, size, variant = key
        name = _family_name(ctx, dataset, size, variant)
        tag = dict(zip(FIGURE_FAMILY, key, strict=True))
        log, ev, wt = (_select(f, **tag) if len(f) else f for f in (logs, evals, weights))
        title = f"Training curves: {name}"
        if len(log) == 0 and len(ev) == 0:
            out.append(_Skipped(title, "no readable `train_log.csv` or `evals.csv` in the finished cells"))
        else:
            split = sorted(set(ev["split"])) if len(ev) else ["val"]
            label = {"val": "the validation split", "test": "the test split"}.get("/".join(split), "/".join(split))
            files = plots.training_curves(
                log, ev, order=_row_order([*log.get("row", []), *ev.get("row", [])]), palette=palette,
                eval_label=label, title=title,
                stem=figures_dir / _slug("training", dataset, f"d{size}", _variant_slug(variant)),
            )  # fmt: skip
            out.append(_Figure(title, files, f"Recall@1 measured during training on {label}; lines: mean over "
                                             "seeds, bands: ±1 SD; iterations averaged in bins."))  # fmt: skip
        title = f"Pair weights at the end of training: {name}"
        if len(wt) == 0 or not (wt["weight"] > 0).any():
            out.append(_Skipped(title, "no `pair_weights.npz` with non-zero weights in the finished cells"))
        else:
            files = plots.pair_weight_distributions(
                wt, order=_row_order(wt["row"]), title=title,
                stem=figures_dir / _slug("pair_weights", dataset, f"d{size}", _variant_slug(variant)),
            )  # fmt: skip
            out.append(_Figure(title, files, "The GPW view: the weight |∂L/∂S| each loss gives the selected "
                                             "positive and negative pairs of a few training batches after the "
                                             "last iteration (all seeds pooled)."))  # fmt: skip
    return out


def _figures_section(ctx: _Context, figures: list[_Figure | _Skipped]) -> str:
    lines = ["## Figures", "", "PNG shown; an SVG of each lies beside it in `figures/`."]
    for item in figures:
        lines.append("")
        if isinstance(item, _Skipped):
            lines.append(f"- *{_esc(item.title)}*: skipped: {item.reason}.")
            continue
        png = item.files[0].relative_to(ctx.exp_dir).as_posix()
        svg = item.files[1].relative_to(ctx.exp_dir).as_posix()
        lines += [f"### {_esc(item.title)}", "", f"![{_esc(item.title)}]({png})", "",
                  f"{item.caption} ([SVG]({svg}))"]  # fmt: skip
    return "\n".join(lines)


def _other_methods_section(ctx: _Context) -> str:
    datasets = set(ctx.cells["dataset"])
    others = ctx.paper[~ctx.paper["implemented"].astype(bool) & ctx.paper["dataset"].isin(datasets)]
    if others.empty:
        return ""
    lines = ["## The paper's other methods (not implemented here)", "",
             "For context: the other rows of the paper's Tables 3-5 on the datasets of this experiment (Recall@K, %)."]  # fmt: skip
    for dataset in _datasets(others):
        part = others[others["dataset"] == dataset]
        ks = sorted(set(part["k"]))
        wide = part.pivot_table(index=["table", "method", "embedding_size"], columns="k", values="recall", sort=False)
        rows = [[f"T{t}", _esc(m), s, *(_num(v, 1) for v in wide.loc[(t, m, s), ks])] for t, m, s in wide.index]
        lines += ["", f"**{DATASET_NAMES.get(dataset, dataset)}**", "",
                  _table(["table", "method", "size", *(f"R@{k}" for k in ks)], rows)]  # fmt: skip
    return "\n".join(lines)


def _appendix(ctx: _Context) -> str:
    per_cell = ctx.cells.drop_duplicates("cell_id").sort_values(["dataset", "embedding_size", "row", "seed"])
    rows = []
    for r in per_cell.itertuples():
        final = ctx.files.finals.get(r.cell_id, {})
        rows.append([_esc(r.cell_id), r.status, r.select_on, _esc(final.get("select_metric") or "–"),
                     final.get("selected_iteration") if final.get("selected_iteration") is not None else "–",
                     final.get("iterations", "–")])  # fmt: skip
    return "\n".join(["## Appendix: checkpoint selection per cell", "",
                      _table(["cell", "status", "select_on", "select metric", "selected iteration", "iterations"], rows)])  # fmt: skip


def write_report(experiment_dir: Path, *, paper_dir: Path | None = None) -> Path:
    """Write ``<experiment_dir>/report.md`` and ``<experiment_dir>/figures/``; return the report's path.

    ``paper_dir`` defaults to the checkout's ``results/paper/``; when that is absent the report is
    written without the paper's columns (and says so). An explicitly given ``paper_dir`` must exist.
    """
    exp_dir = Path(experiment_dir)
    cells = read_cells(exp_dir)
    if paper_dir is not None and not Path(paper_dir).is_dir():
        raise UserError(f"{paper_dir}: no such directory; expected the paper's tables (results/paper/table2.csv ...)")
    paper = load_paper_tables(Path(paper_dir) if paper_dir is not None else PAPER_DIR)
    paper_note = "" if len(paper) else (f"The paper's tables were not found in {paper_dir or PAPER_DIR}: the paper "
                                        "columns are empty (pass --paper DIR).")  # fmt: skip
    finished = cells[(cells["status"] == "finished") & cells["value"].notna() & (cells["metric"] != "")]
    files = read_cell_files(exp_dir, cells)
    weights_titles, selection_text = _selection_words(cells, files.finals)
    ctx = _Context(
        exp_dir=exp_dir, cells=cells, finished=finished, reference=paper_reference(paper), paper=paper,
        paper_note=paper_note, files=files, order=_row_order(cells["row"]), weights_titles=weights_titles,
        many_variants=cells["variant"].nunique() > 1,
    )  # fmt: skip
    experiment = ", ".join(sorted(set(cells["experiment"]) - {""})) or exp_dir.name
    comparison = _comparison(ctx) if len(finished) else pd.DataFrame()
    parts = [
        f"# Report: {_esc(experiment)}",
        f"Written by `python -m harness.report` from the stored runs in `{exp_dir}` (no training). "
        "All values in percent.",
        _runs_section(ctx),
        "## Checkpoint selection\n\n" + selection_text,
    ]  # fmt: skip
    if len(finished):
        figures = _figures(ctx, comparison)
        parts += [_paper_section(ctx, comparison), _other_metrics_section(ctx, comparison),
                  _between_losses_section(ctx, comparison), _figures_section(ctx, figures)]  # fmt: skip
    else:
        parts.append("## Results\n\nNo cell has finished with results: no tables and no figures (see Runs).")
    parts += [_other_methods_section(ctx), _appendix(ctx)]
    path = exp_dir / "report.md"
    tmp = exp_dir / ".report.md.tmp"
    tmp.write_text("\n\n".join(p for p in parts if p) + "\n")
    os.replace(tmp, path)
    return path


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


if __name__ == "__main__":
    cli_main(main)
