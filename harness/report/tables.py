"""The report's result tables in Markdown: against the paper, other metrics, between losses."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from harness import stats
from harness.report.protocol import BIAS_LEGEND, PAPER_BIAS, PROTOCOL_NOTES, paper_mismatch, protocol_biases
from harness.report.reading import (
    CELL_GROUP,
    DATASET_NAMES,
    WEIGHTS_ORDER,
    ReportContext,
    with_k,
)


def esc(text: object) -> str:
    """Markdown-safe table text (loss names contain * and _)."""
    return re.sub(r"([*_|\\])", r"\\\1", str(text))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x: float | None, digits: int = 2, sign: bool = False) -> str:
    """A number for a table ('–' for missing)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "+inf" if x > 0 else "−inf"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def p_value(p: float) -> str:
    """A p-value for a table ('–' for missing)."""
    if p is None or math.isnan(p):
        return "–"
    if p == 0:
        return "0"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _mean_ci(mean: float, low: float, high: float, sign: bool = False) -> str:
    if math.isnan(low):
        return num(mean, sign=sign)
    return f"{num(mean, sign=sign)} [{num(low, sign=sign)}, {num(high, sign=sign)}]"


def size_variant(size: object, variant: str, many_variants: bool) -> str:
    """The size (and variant, when the experiment has several) of a block."""
    return f"d={size}" + (f", variant {esc(variant)}" if many_variants else "")


def datasets(frame: pd.DataFrame) -> list[str]:
    """The datasets of ``frame``: the paper's order, then the others alphabetically."""
    present = set(frame["dataset"])
    return [d for d in DATASET_NAMES if d in present] + sorted(present - set(DATASET_NAMES))


def select(frame: pd.DataFrame, **values: object) -> pd.DataFrame:
    """The rows of ``frame`` whose columns have the given values."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in values.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def weights_shown(frame: pd.DataFrame) -> list[str]:
    """The kinds of weights ``frame`` has, in report order."""
    return [w for w in WEIGHTS_ORDER if (frame["weights"] == w).any()]


def _cell_protocols(ctx: ReportContext, test: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, weights): why the paper has no row for its configuration ('' if it has) and its protocol."""
    rows = []
    for (cell_id, weights), cell in test.groupby(["cell_id", "weights"], sort=False):
        config, env = ctx.files.configs.get(cell_id), ctx.files.envs.get(cell_id)
        rows.append(
            {
                "cell_id": cell_id,
                "weights": weights,
                "mismatch": paper_mismatch(cell.iloc[0], config),
                "protocol": protocol_biases(config, env, weights, coincide=ctx.coincide),
            }
        )
    return pd.DataFrame(rows, columns=["cell_id", "weights", "mismatch", "protocol"])


def _joined(values: pd.Series) -> str:
    return " / ".join(sorted({v for v in values if v}))


def comparison(ctx: ReportContext) -> pd.DataFrame:
    """Per test-set cell and metric: summary over seeds; for recall@K the paper value and verdict.

    A cell is judged only against the paper row of the loss, preset and label it really ran
    (:func:`~harness.report.protocol.paper_mismatch`); otherwise ``mismatch`` says why not.
    Verdict columns: ``paper``, ``tables``, ``low``, ``high`` (95% prediction interval for one run),
    ``diff``, ``verdict``, ``equivalent`` (within +-``ctx.options.margin`` points), ``protocol``.
    """
    test = ctx.finished[ctx.finished["split"] == "test"]
    summary = stats.summarize(test, CELL_GROUP)
    empty = {
        "paper": math.nan,
        "tables": "",
        "low": math.nan,
        "high": math.nan,
        "diff": math.nan,
        "verdict": "",
        "equivalent": False,
        "mismatch": "",
        "protocol": "",
    }
    recall = with_k(test)
    if ctx.reference.empty or recall.empty:
        return summary.assign(**empty)
    recall = recall.merge(_cell_protocols(ctx, recall), on=["cell_id", "weights"], how="left")
    with_paper = recall.merge(ctx.reference, on=["dataset", "loss", "embedding_size", "k"], how="left")
    rows = []
    for key, group in with_paper.groupby(list(CELL_GROUP), sort=False):
        row = {
            **dict(zip(CELL_GROUP, key, strict=True)),
            **empty,
            "mismatch": _joined(group["mismatch"]),
            "protocol": _joined(group["protocol"]),
        }
        paper = group["recall"].iloc[0]
        if not math.isnan(paper) and not row["mismatch"]:
            verdict = stats.paper_verdict(group["value"], float(paper), margin=ctx.options.margin)
            row.update(
                paper=float(paper),
                tables=group["tables"].iloc[0],
                low=verdict["low"],
                high=verdict["high"],
                diff=verdict["diff"],
                verdict=verdict["verdict"],
                equivalent=verdict["equivalent"],
            )
        elif not math.isnan(paper):
            row["tables"] = group["tables"].iloc[0]
        rows.append(row)
    verdicts = pd.DataFrame(rows, columns=[*CELL_GROUP, *empty])
    return summary.merge(verdicts, on=list(CELL_GROUP), how="left").fillna(
        {"verdict": "", "tables": "", "mismatch": "", "protocol": ""}
    )


def _order_frame(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows in report order: dataset, size, variant, loss (Table 2 order), K."""
    ranked = frame.assign(
        _ds=frame["dataset"].map({d: i for i, d in enumerate(datasets(frame))}),
        _rank=frame["row"].map({row: i for i, row in enumerate(order)}),
    )
    keys = ["_ds", "embedding_size", "variant", "_rank", *(["k"] if "k" in frame else [])]
    return ranked.sort_values(keys).drop(columns=["_ds", "_rank"])


def _paper_rows(ctx: ReportContext, part: pd.DataFrame) -> list[list[object]]:
    margin = ctx.options.margin
    rows = []
    for r in _order_frame(part, ctx.order).itertuples():
        within = f"reproduced within ±{margin:g} points" if r.equivalent else "–"
        rows.append(
            [
                size_variant(r.embedding_size, r.variant, ctx.many_variants),
                esc(r.row),
                r.k,
                r.n,
                _mean_ci(r.mean, r.low, r.high),
                f"{r.paper:.1f} (T{r.tables})",
                num(r.diff, 1, sign=True),
                f"**{r.verdict}**" if r.k == 1 else r.verdict,
                within,
                esc(r.protocol) or "–",
            ]
        )
    return rows


def paper_section(ctx: ReportContext, compared: pd.DataFrame) -> str:
    """Recall@K of the cells that have paper values against them, with verdicts and their biases.

    Empty when no cell has a paper value (glyphs): no section of '–' rows.
    """
    recall = with_k(compared)
    has_paper = recall["tables"].astype(bool) if len(recall) else pd.Series(dtype=bool)
    if not has_paper.any():
        return ""
    judged = recall[recall["paper"].notna()]
    margin = ctx.options.margin
    lines = [
        "## Results against the paper (Recall@K, test set, %)",
        "",
        "The paper reports one run per number, so the question is whether ONE new run of ours would "
        "land where it did. Ours: mean over n seeds [95% prediction interval for one run: "
        "mean ± t·s·√(1 + 1/n)]. Verdict: **consistent** = the paper's value lies inside that interval; "
        f"**below** / **above** = outside it; *no test* below 2 seeds. *reproduced within ±{margin:g} "
        f"points*: two one-sided tests (TOST, 5%) show our mean within ±{margin:g} points of the paper's "
        "run (`--margin`); shown only when they do.",
        "",
        "- Verdicts are per cell and metric, not corrected for multiplicity: "
        "**Recall@1 is the primary verdict** (bold); Recall@K for K > 1 is secondary.",
        f"- Known bias of every comparison: {PAPER_BIAS}. Each row names its own protocol. " + BIAS_LEGEND,
        f"- {PROTOCOL_NOTES}",
        "- A cell is judged only against the paper row of the loss, preset and label it ran.",
    ]
    unjudged = recall[has_paper & recall["mismatch"].astype(bool)].drop_duplicates(
        ["row", "variant", "mismatch"]
    )
    if len(unjudged):
        lines.append(
            "- No paper row for this configuration (not judged): "
            + "; ".join(
                f"{esc(r.row)}{f' (variant {esc(r.variant)})' if ctx.many_variants else ''}: "
                f"{esc(r.mismatch)}"
                for r in _order_frame(unjudged, ctx.order).itertuples()
            )
            + "."
        )
    for weights in weights_shown(judged):
        part = judged[judged["weights"] == weights]
        verdicts = part.loc[part["k"] == 1, "verdict"].value_counts()
        lines += ["", f"### {ctx.weights_titles[weights]}", ""]
        if len(verdicts):
            lines += ["Recall@1 verdicts: " + ", ".join(f"{v}: {n}" for v, n in verdicts.items()) + ".", ""]
        for dataset in datasets(part):
            lines += [
                f"**{DATASET_NAMES.get(dataset, dataset)}**",
                "",
                markdown_table(
                    [
                        "size",
                        "loss",
                        "K",
                        "n",
                        "ours % [95% PI]",
                        "paper %",
                        "diff",
                        "verdict",
                        f"within ±{margin:g}",
                        "protocol",
                    ],
                    _paper_rows(ctx, part[part["dataset"] == dataset]),
                ),
                "",
            ]
    return "\n".join(lines).rstrip()


def other_metrics_section(ctx: ReportContext, compared: pd.DataFrame) -> str:
    """MAP@R, R-precision, NMI ... per cell (the paper has none of them)."""
    others = compared[~compared["metric"].str.startswith("recall@")]
    if others.empty:
        return ""
    metrics = sorted(set(others["metric"]))
    lines = ["## Other metrics (test set, %, mean [95% CI])", "", "The paper reports Recall@K only.", ""]
    for weights in weights_shown(others):
        part = others[others["weights"] == weights]
        lines += [f"### {ctx.weights_titles[weights]}", ""]
        keys = ["dataset", "embedding_size", "variant", "row"]
        rows = []
        for key, group in _order_frame(part, ctx.order).groupby(keys, sort=False):
            values = group.set_index("metric")
            rows.append(
                [
                    DATASET_NAMES.get(key[0], key[0]).split(" (")[0],
                    size_variant(key[1], key[2], ctx.many_variants),
                    esc(key[3]),
                    int(values["n"].max()),
                    *(
                        _mean_ci(*values.loc[m, ["mean", "ci_low", "ci_high"]]) if m in values.index else "–"
                        for m in metrics
                    ),
                ]
            )
        lines += [markdown_table(["dataset", "size", "loss", "n", *metrics], rows), ""]
    return "\n".join(lines).rstrip()
