"""The report's result tables in Markdown: against the paper, other metrics, between losses."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from harness import stats
from harness.report.reading import (
    CELL_GROUP,
    DATASET_NAMES,
    ORDER_TABLE,
    TEST_FAMILY,
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


def num(x: float, digits: int = 2, sign: bool = False) -> str:
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


def comparison(ctx: ReportContext) -> pd.DataFrame:
    """Per test-set cell and metric: summary over seeds, and for recall@K the paper value and verdict."""
    test = ctx.finished[ctx.finished["split"] == "test"]
    summary = stats.summarize(test, CELL_GROUP)
    recall = with_k(test)
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
    ranked = frame.assign(_ds=frame["dataset"].map({d: i for i, d in enumerate(datasets(frame))}),
                          _rank=frame["row"].map({row: i for i, row in enumerate(order)}))  # fmt: skip
    keys = ["_ds", "embedding_size", "variant", "_rank", *(["k"] if "k" in frame else [])]
    return ranked.sort_values(keys).drop(columns=["_ds", "_rank"])


def paper_section(ctx: ReportContext, compared: pd.DataFrame) -> str:
    """Recall@K of every cell against the paper's value, with a verdict."""
    recall = with_k(compared)
    lines = [
        "## Results against the paper (Recall@K, test set, %)", "",
        "Ours: mean over seeds [95% t confidence interval], n = seeds. Paper: the value printed in the table(s) "
        "named. Diff = ours − paper [95% CI]; p: two-sided one-sample t-test of our seeds against the paper's "
        "value. Verdict: **reproduced** = the paper's value lies inside our 95% CI; **below** / **above** = our "
        "whole CI lies below / above it; *no test (1 seed)* = a single seed gives no interval and no test.",
    ]  # fmt: skip
    if ctx.paper_note:
        lines += ["", ctx.paper_note]
    for weights in weights_shown(recall):
        part = recall[recall["weights"] == weights]
        verdicts = part["verdict"].replace("", np.nan).dropna().value_counts()
        lines += ["", f"### {ctx.weights_titles[weights]}", ""]
        if len(verdicts):
            lines += ["Verdicts: " + ", ".join(f"{v}: {n}" for v, n in verdicts.items()) + ".", ""]
        for dataset in datasets(part):
            rows = []
            for r in _order_frame(part[part["dataset"] == dataset], ctx.order).itertuples():
                has_paper = isinstance(r.paper, float) and not math.isnan(r.paper)
                rows.append([
                    size_variant(r.embedding_size, r.variant, ctx.many_variants), esc(r.row), r.k, r.n,
                    _mean_ci(r.mean, r.ci_low, r.ci_high),
                    f"{r.paper:.1f} (T{r.tables})" if has_paper else "–",
                    _mean_ci(r.diff, r.diff_ci_low, r.diff_ci_high, sign=True) if has_paper else "–",
                    p_value(r.p) if has_paper else "–",
                    r.verdict if has_paper else "no paper value",
                ])  # fmt: skip
            lines += [f"**{DATASET_NAMES.get(dataset, dataset)}**", "",
                      markdown_table(["size", "loss", "K", "n", "ours % [95% CI]", "paper %", "diff [95% CI]", "p",
                                      "verdict"], rows), ""]  # fmt: skip
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
            rows.append([DATASET_NAMES.get(key[0], key[0]).split(" (")[0],
                         size_variant(key[1], key[2], ctx.many_variants), esc(key[3]), int(values["n"].max()),
                         *(_mean_ci(*values.loc[m, ["mean", "ci_low", "ci_high"]]) if m in values.index else "–"
                           for m in metrics)])  # fmt: skip
        lines += [markdown_table(["dataset", "size", "loss", "n", *metrics], rows), ""]
    return "\n".join(lines).rstrip()


def _table2_by_row(ctx: ReportContext, rows: Iterable[str], k: int) -> pd.Series:
    """The paper's Table 2 value at K for each of our rows whose loss is one of Table 2's rows."""
    paper = ctx.paper
    table2 = paper[(paper["table"] == ORDER_TABLE) & (paper["k"] == k) & paper["implemented"].astype(bool)]
    by_loss = dict(zip(table2["loss"], table2["recall"], strict=True))
    loss_of = ctx.finished.drop_duplicates("row").set_index("row")["loss"]
    return pd.Series({row: by_loss[loss_of[row]] for row in rows if loss_of.get(row) in by_loss}, dtype=float)


def between_losses_section(ctx: ReportContext, compared: pd.DataFrame) -> str:
    """Friedman, ranking against Table 2 and the pairwise tests per block of losses."""
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
    recall = with_k(compared)
    blocks = r1.groupby(list(TEST_FAMILY), sort=True)
    for key in sorted(blocks.groups, key=lambda k: (*k[:3], WEIGHTS_ORDER.index(k[3]))):
        block = blocks.get_group(key)
        dataset, size, variant, weights = key
        present = ctx.ordered(block["row"])
        lines += ["", f"### {DATASET_NAMES.get(dataset, dataset)}, {size_variant(size, variant, ctx.many_variants)}, "
                      f"{ctx.weights_titles[weights]}", ""]  # fmt: skip
        if len(present) < 2:
            lines.append(f"Only one loss ({esc(present[0])}): nothing to compare.")
            continue
        where = dict(zip(TEST_FAMILY, key, strict=True))
        f = select(friedman, **where).iloc[0]
        lines.append(f"- Friedman over {f.k} losses and {f.n} seeds: "
                     + (f"chi² = {f.statistic:.2f}, p = {p_value(f.p)}" if not f.note else
                        f"{f.note} (treatments = losses, blocks = seeds)"))  # fmt: skip
        rank_rows = []
        for k in (1, 2, 4, 8):
            ours = select(recall, k=k, **where)
            if ours.empty:
                continue
            agreement = stats.rank_agreement(ours.set_index("row")["mean"], _table2_by_row(ctx, ours["row"], k))
            rank_rows.append([k, agreement.n, num(agreement.tau, 3), p_value(agreement.p), agreement.note or "–"])
        if rank_rows and ctx.paper.empty:
            lines.append("- Ranking against Table 2: no paper tables found.")
        elif rank_rows:
            lines += ["- Ranking against the paper's Table 2:", "",
                      markdown_table(["K", "rows in common", "Kendall tau", "p", "note"], rank_rows)]  # fmt: skip
        mine = select(pairs, **where)
        rows = [[esc(p.a), esc(p.b), p.n, num(p.mean_diff, sign=True), p_value(p.p_t), p_value(p.p_t_holm),
                 p_value(p.p_w), p_value(p.p_w_holm)] for p in mine.itertuples()]  # fmt: skip
        lines += ["", "- Pairs:", "", markdown_table(["A", "B", "seeds", "mean A − B (pts)", "paired t p", "Holm",
                                                      "Wilcoxon p", "Holm"], rows)]  # fmt: skip
    return "\n".join(lines)
