"""The report's decisions between losses: the lead table and figures per block, the comparison details, and
agreement with a committed reference run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import stats
from harness.records import CellStatus
from harness.report import comparison_plots, plots
from harness.report.figures import Figure, Skipped, figure_markdown, slug, variant_slug
from harness.report.protocol import PAPER_PRESETS
from harness.report.reading import (
    DATASET_NAMES,
    ORDER_TABLE,
    WEIGHTS_ORDER,
    ReportContext,
    read_cells,
    with_k,
)
from harness.report.tables import esc, markdown_table, num, p_value, select, size_variant, weights_shown

METRIC_NAMES = {"recall@1": "R@1", "map_at_r": "MAP@R", "r_precision": "R-Prec", "nmi": "NMI"}
TARGET_DIFFERENCE = 2.0
"""Points of Recall@1 the design should detect (the main job's target)."""
POWER = 0.8


@dataclass
class Block:
    """The losses compared within one dataset, size, variant and kind of weights (Recall@1, test set)."""

    key: tuple
    title: str
    seeds: pd.DataFrame
    """seeds x rows (report order), Recall@1 in points."""
    control: str


def control_row(ctx: ReportContext, block: pd.DataFrame, rows: list[str]) -> str:
    """MS with the paper's preset if the block has it, else any MS, else the first row."""
    meta = block.drop_duplicates("row").set_index("row")
    ms = [r for r in rows if meta.loc[r, "loss"] == "ms"]
    paper_ms = [r for r in ms if meta.loc[r, "preset"] in PAPER_PRESETS]
    return (paper_ms or ms or rows)[0]


def blocks(ctx: ReportContext) -> list[Block]:
    """Every block with test Recall@1, ordered by dataset, size, variant, weights."""
    test = ctx.finished[(ctx.finished["split"] == "test") & (ctx.finished["metric"] == "recall@1")]
    out = []
    groups = test.groupby(["dataset", "embedding_size", "variant", "weights"], sort=True)
    for key in sorted(groups.groups, key=lambda k: (*k[:3], WEIGHTS_ORDER.index(k[3]))):
        block = groups.get_group(key)
        rows = ctx.ordered(block["row"])
        seeds = block.pivot_table(index="seed", columns="row", values="value", aggfunc="mean")[rows]
        dataset, size, variant, weights = key
        title = (
            f"{DATASET_NAMES.get(dataset, dataset)}, {size_variant(size, variant, ctx.many_variants)}, "
            f"{ctx.weights_titles[weights]}"
        )
        out.append(Block(key, title, seeds, control_row(ctx, block, rows)))
    return out


def _comparisons(ctx: ReportContext, block: Block) -> stats.PlannedComparisons:
    return stats.planned_comparisons(block.seeds, block.control, all_pairs=ctx.options.all_pairs, power=POWER)


def _differences(table: pd.DataFrame, control: str) -> pd.DataFrame:
    """What the forest plot draws: each comparison as ``other - control`` (or ``a - b`` for other pairs)."""
    rows = []
    for r in table.itertuples():
        flip = r.a == control  # planned comparisons are control - other: show other - control
        sign = -1.0 if flip else 1.0
        low, high = sorted((sign * r.ci_low, sign * r.ci_high))
        bca_low, bca_high = sorted((sign * r.bca_low, sign * r.bca_high))
        rows.append(
            {
                "label": r.b if flip else f"{r.a} − {r.b}",
                "diff": sign * r.mean_diff,
                "ci_low": low,
                "ci_high": high,
                "bca_low": bca_low,
                "bca_high": bca_high,
                "detectable": r.detectable,
                "decision": decision_text(r.decision, r.near_threshold),
            }
        )
    return pd.DataFrame(rows)


NEAR_THRESHOLD_WORDS = "near the threshold"
"""What a decision whose Holm p lies in :data:`harness.stats.NEAR_THRESHOLD` is marked with."""


def decision_text(decision: str, near: bool) -> str:
    """A comparison's decision, marked when its Holm p-value is near the threshold."""
    return f"{decision} ({NEAR_THRESHOLD_WORDS})" if near else decision


def near_threshold_note(table: pd.DataFrame) -> str:
    """The sentence under a table of comparisons with decisions near the threshold ('' when none is)."""
    if not table["near_threshold"].any():
        return ""
    low, high = stats.NEAR_THRESHOLD
    return (
        f"*{NEAR_THRESHOLD_WORDS}*: a Holm p between {low:g} and {high:g}; a re-run on another machine can "
        "flip the decision (floating-point rounding differs between machines: one comparison of the "
        "glyphs ablation gave p 0.031 on one machine and 0.151 on another)."
    )


def _design_sentence(planned: stats.PlannedComparisons, n: int) -> str:
    """The design's minimum detectable difference and the seeds it would need for the target difference."""
    sds = planned.table["sd_diff"].dropna()
    if n < 2 or sds.empty:
        return f"With {n} seed(s) no paired test is possible: nothing can be detected."
    pooled = math.sqrt(float((sds**2).mean()))
    m = planned.comparisons
    detectable = stats.detectable_difference(pooled, n, power=POWER, comparisons=m)
    if pooled == 0:
        return (
            f"The paired differences have no spread over the {n} seeds: every difference is detected exactly."
        )
    needed = stats.seeds_needed(TARGET_DIFFERENCE, pooled, power=POWER, comparisons=m)
    return (
        f"**Design: {n} seeds, {m} comparison(s) (Holm); pooled paired SD {pooled:.2f} points. Minimum "
        f"detectable difference D = {detectable:.1f} points** (two-sided paired t, 80% power, "
        f"level 0.05/{m}); detecting {TARGET_DIFFERENCE:.1f} points would need **{needed} seeds**."
    )


def _cell(mean: float, low: float, high: float) -> str:
    return num(mean, 1) if math.isnan(low) else f"{mean:.1f} ± {(high - low) / 2:.1f}"


def _lead_table(
    ctx: ReportContext, block: Block, planned: stats.PlannedComparisons, compared: pd.DataFrame
) -> str:
    dataset, size, variant, weights = block.key
    part = select(compared, dataset=dataset, embedding_size=size, variant=variant, weights=weights)
    metrics = [m for m in METRIC_NAMES if m in set(part["metric"])]
    by_row = {r: {x.metric: x for x in g.itertuples()} for r, g in part.groupby("row")}
    versus = {}
    for r in planned.table.itertuples():
        if block.control in (r.a, r.b) and r.a != r.b:
            other, sign = (r.b, -1.0) if r.a == block.control else (r.a, 1.0)
            low, high = sorted((sign * r.ci_low, sign * r.ci_high))
            versus[other] = [
                f"{num(sign * r.mean_diff, 1, sign=True)} [{num(low, 1, sign=True)}, "
                f"{num(high, 1, sign=True)}]",
                p_value(r.p_holm),
                decision_text(r.decision, r.near_threshold),
            ]
    rows = []
    for row in [block.control, *(r for r in block.seeds.columns if r != block.control)]:
        values = [
            _cell(v.mean, v.ci_low, v.ci_high) if (v := by_row.get(row, {}).get(m)) else "–" for m in metrics
        ]
        label = f"{esc(row)} (control)" if row == block.control else esc(row)
        rows.append([label, int(block.seeds[row].notna().sum()), *values, *versus.get(row, ["–", "–", "–"])])
    header = [
        "loss",
        "n",
        *(f"{METRIC_NAMES[m]} %" for m in metrics),
        f"R@1 − {esc(block.control)} [95% CI]",
        "Holm p",
        "decision",
    ]
    return markdown_table(header, rows)


def _lead_figures(
    ctx: ReportContext, block: Block, planned: stats.PlannedComparisons
) -> list[Figure | Skipped]:
    dataset, size, variant, _ = block.key
    name = f"{DATASET_NAMES.get(dataset, dataset).split(' (')[0]}, embedding {size}" + (
        f", variant {variant}" if ctx.many_variants else ""
    )
    stem_tail = (dataset, f"d{size}", variant_slug(variant))
    out: list[Figure | Skipped] = []
    differences = _differences(planned.table, block.control)
    title = f"Paired differences against {block.control}: {name}"
    if differences.empty or (planned.table["n"] < 2).all():
        out.append(Skipped(title, "fewer than 2 common seeds: no paired interval"))
    else:
        against = "the row" if not ctx.options.all_pairs else "A"
        files = comparison_plots.forest(
            differences,
            xlabel=f"test Recall@1 of {against} − {block.control if against == 'the row' else 'B'} "
            "(points, same seeds)",
            title=title,
            stem=ctx.exp_dir / "figures" / slug("forest", *stem_tail),
        )
        out.append(
            Figure(
                title,
                files,
                "Right of 0: better than the control. Grey: ±D, the true difference this "
                "design detects with 80% power; an interval inside it settles nothing.",
            )
        )
    ranking = stats.friedman_ranking(block.seeds)
    title = f"Critical-difference diagram: {name}"
    if ranking.friedman.note:
        out.append(Skipped(title, f"Friedman {ranking.friedman.note}"))
    else:
        files = comparison_plots.critical_difference(
            ranking.ranks,
            ranking.pvalues,
            critical_difference=ranking.critical_difference,
            styles=plots.label_styles(ctx.order),
            title=f"{title} (average rank over {ranking.friedman.n} seeds)",
            stem=ctx.exp_dir / "figures" / slug("critical_difference", *stem_tail),
        )
        f = ranking.friedman
        out.append(
            Figure(
                title,
                files,
                f"Friedman over {f.k} losses and {f.n} seeds: chi² = {f.statistic:.2f}, "
                f"p = {p_value(f.p)}. Average rank per loss (1 = best); a bar joins losses "
                "the Nemenyi post-hoc test does not separate at 5% (Demšar 2006).",
            )
        )
    return out


def _primary_blocks(ctx: ReportContext, all_blocks: list[Block]) -> list[Block]:
    """The blocks of the first kind of weights shown (selected, or final when they coincide)."""
    shown = weights_shown(ctx.finished)
    return [b for b in all_blocks if b.key[3] == shown[0]] if shown else []


def lead_section(ctx: ReportContext, compared: pd.DataFrame, all_blocks: list[Block]) -> str:
    """The report's first section: per block one compact table, the forest plot and the CD diagram."""
    scope = (
        "every pair of losses (`--all-pairs`), Holm over all pairs"
        if ctx.options.all_pairs
        else "the planned comparisons: the control (MS) against each other loss, Holm over them (every pair: "
        "`--all-pairs`)"
    )
    lines = [
        "## At a glance",
        "",
        "Test set, mean ± half-width of the 95% t interval over seeds (%). Decisions from " + scope + ": "
        "paired t-test over the seeds both losses have; *no difference larger than D detectable* means "
        "the design could not have seen a smaller true difference, not that the losses are equal.",
    ]
    for block in _primary_blocks(ctx, all_blocks):
        lines += ["", f"### {esc(block.title)}", ""]
        if block.seeds.shape[1] < 2:
            lines.append(f"Only one loss ({esc(block.seeds.columns[0])}): nothing to compare.")
            continue
        planned = _comparisons(ctx, block)
        lines += [_lead_table(ctx, block, planned, compared), ""]
        near = near_threshold_note(planned.table)
        lines += [near, ""] if near else []
        lines.append(_design_sentence(planned, len(block.seeds)))
        lines += [figure_markdown(ctx, item) for item in _lead_figures(ctx, block, planned)]
    return "\n".join(lines)


def _kendall_rows(ctx: ReportContext, compared: pd.DataFrame, key: tuple) -> list[list[object]]:
    dataset, size, variant, weights = key
    recall = with_k(compared)
    paper = ctx.paper
    rows: list[list[object]] = []
    loss_of = ctx.finished.drop_duplicates("row").set_index("row")["loss"]
    for k in (1, 2, 4, 8):
        ours = select(recall, k=k, dataset=dataset, embedding_size=size, variant=variant, weights=weights)
        if ours.empty:
            continue
        table2 = paper[
            (paper["table"] == ORDER_TABLE) & (paper["k"] == k) & paper["implemented"].astype(bool)
        ]
        by_loss = dict(zip(table2["loss"], table2["recall"], strict=True))
        theirs = pd.Series(
            {r: by_loss[loss_of[r]] for r in ours["row"] if loss_of.get(r) in by_loss}, dtype=float
        )
        agreement = stats.rank_agreement(ours.set_index("row")["mean"], theirs)
        rows.append([k, agreement.n, num(agreement.tau, 3), p_value(agreement.p), agreement.note or "–"])
    return rows


def between_losses_section(ctx: ReportContext, compared: pd.DataFrame, all_blocks: list[Block]) -> str:
    """Every comparison in full per block and kind of weights: intervals, p-values, D, Friedman, ranking."""
    lines = [
        "## Between losses in detail (Recall@1, test set)",
        "",
        "Per block: each comparison's mean paired difference with its 95% t and BCa bootstrap (scipy, "
        "9,999 resamples, fixed seed) intervals, paired t p-value, Holm-adjusted p, D (the smallest true "
        "difference detected with 80% power at level 0.05 / comparisons) and the decision; Friedman with "
        "average ranks and the Nemenyi critical difference; Kendall's tau between our mean Recall@K per "
        "loss and the paper's Table 2 (Cars-196, embedding 64) over the Table 2 rows we ran.",
    ]
    notes = []
    body = []
    for block in all_blocks:
        body += ["", f"### {esc(block.title)}", ""]
        if block.seeds.shape[1] < 2:
            body.append(f"Only one loss ({esc(block.seeds.columns[0])}): nothing to compare.")
            continue
        ranking = stats.friedman_ranking(block.seeds)
        f = ranking.friedman
        body.append(
            f"- Friedman over {f.k} losses and {f.n} seeds: "
            + (
                f"chi² = {f.statistic:.2f}, p = {p_value(f.p)}; average ranks: "
                + ", ".join(f"{esc(r)} {v:.2f}" for r, v in ranking.ranks.items())
                + f"; Nemenyi critical difference {ranking.critical_difference:.2f}"
                if not f.note
                else f"{f.note} (treatments = losses, blocks = seeds)"
            )
        )
        kendall = _kendall_rows(ctx, compared, block.key)
        if kendall and ctx.paper.empty:
            body.append("- Ranking against Table 2: no paper tables found.")
        elif kendall:
            body += [
                "- Ranking against the paper's Table 2:",
                "",
                markdown_table(["K", "rows in common", "Kendall tau", "p", "note"], kendall),
                "",
            ]
        planned = _comparisons(ctx, block)
        if planned.wilcoxon_note:
            notes.append(planned.wilcoxon_note)
        with_wilcoxon = planned.table["p_wilcoxon"].notna().any()
        rows = [
            [
                esc(r.a),
                esc(r.b),
                r.n,
                num(r.mean_diff, sign=True),
                f"[{num(r.ci_low, sign=True)}, {num(r.ci_high, sign=True)}]",
                f"[{num(r.bca_low, sign=True)}, {num(r.bca_high, sign=True)}]",
                p_value(r.p),
                p_value(r.p_holm),
                *([p_value(r.p_wilcoxon_holm)] if with_wilcoxon else []),
                num(r.detectable, 1),
                decision_text(r.decision, r.near_threshold),
            ]
            for r in planned.table.itertuples()
        ]
        near = near_threshold_note(planned.table)
        body += [
            "- Comparisons:",
            "",
            markdown_table(
                [
                    "A",
                    "B",
                    "seeds",
                    "A − B (pts)",
                    "95% t CI",
                    "95% BCa CI",
                    "paired t p",
                    "Holm p",
                    *(["Wilcoxon Holm p"] if with_wilcoxon else []),
                    "D",
                    "decision",
                ],
                rows,
            ),
            *(["", near] if near else []),
        ]
    if notes:
        lines += ["", sorted(set(notes), key=len)[0] + " It is left out wherever that holds."]
    return "\n".join(lines + body)


# ------------------------------------------------------------------ agreement with a committed reference run


def agreement_words(verdict: str, margin: float) -> str:
    """An agreement verdict for the report, with the margin it was judged against."""
    if verdict == stats.AGREES:
        return f"**agrees** (within ±{margin:g})"
    if verdict == stats.UNDECIDED:
        return f"**undecided**: too noisy to tell within ±{margin:g}"
    return f"**{verdict}**"


def reference_section(ctx: ReportContext) -> str:
    """Row by row: does this run agree with the committed reference run within the margin? '' without one."""
    reference_dir = ctx.options.reference_dir
    if reference_dir is None:
        return ""
    theirs = read_cells(reference_dir)
    keys = ["dataset", "embedding_size", "variant", "row"]
    shown = weights_shown(ctx.finished)
    if not shown:
        return ""
    weights = shown[0]
    ours = ctx.finished[
        (ctx.finished["split"] == "test")
        & (ctx.finished["metric"] == "recall@1")
        & (ctx.finished["weights"] == weights)
    ]
    theirs = theirs[
        (theirs["status"] == CellStatus.FINISHED)
        & (theirs["split"] == "test")
        & (theirs["metric"] == "recall@1")
        & (theirs["weights"] == weights)
    ]
    margin = ctx.options.agreement_margin
    agreement = stats.reference_agreement(ours, theirs, by=keys, margin=margin)
    lines = [
        "## Agreement with the committed reference",
        "",
        f"This run against `{reference_dir}` (test Recall@1, {ctx.weights_titles[weights].split(' (')[0]}), "
        "row by row, the seeds of each run taken as independent samples (another machine rounds "
        f"differently). *agrees*: the two means are within ±{margin:g} points, shown by **two one-sided "
        f"Welch t-tests** (TOST, margin ±{margin:g}, `--agreement-margin`); *differs*: not shown within "
        "the margin, and **Welch's two-sample t-test** finds a difference; *undecided*: neither, the "
        f"seeds are too noisy to tell whether the row lies within ±{margin:g}. Both tests are "
        "Holm-corrected across the rows at 5%; the difference ours − reference is given with its 95% "
        "Welch interval, and *shown within* is the smallest margin these seeds show the row within (at "
        "Holm's strictest level): a row agrees whenever the margin exceeds it.",
    ]
    if agreement.empty:
        return "\n".join([*lines, "", "No row of this run is in the reference run: nothing to compare."])
    verdicts = agreement["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{v}: {n}" for v, n in verdicts.items()) + "."]
    undecided = agreement.loc[agreement["verdict"] == stats.UNDECIDED, "smallest_margin"]
    if len(undecided):
        lines.append(
            f"- The undecided rows' seeds show them within ±{undecided.min():.2f} to ±{undecided.max():.2f} "
            f"points at best (column *shown within*): closer agreement than that needs more seeds, not a "
            "re-run."
        )
    ids = {
        side: frame.groupby(keys)["cell_id"].agg(frozenset)
        for side, frame in (("ours", ours), ("ref", theirs))
    }
    changed = [k for k in ids["ours"].index.intersection(ids["ref"].index) if ids["ours"][k] != ids["ref"][k]]
    if changed:
        lines.append(
            f"- {len(changed)} row(s) ran under other cell ids than the reference (the id hashes the "
            "resolved config): their configurations differ, so a difference there is expected."
        )
    agreement["_rank"] = agreement["row"].map({r: i for i, r in enumerate(ctx.order)})
    rows = [
        [
            DATASET_NAMES.get(r.dataset, r.dataset).split(" (")[0],
            size_variant(r.embedding_size, r.variant, ctx.many_variants),
            esc(r.row),
            f"{r.n} / {r.n_reference}",
            num(r.mean, 1),
            num(r.mean_reference, 1),
            f"{num(r.diff, 2, sign=True)} [{num(r.ci_low, 2, sign=True)}, {num(r.ci_high, 2, sign=True)}]",
            f"±{num(r.smallest_margin, 2)}",
            p_value(r.p_equivalence_holm),
            p_value(r.p_holm),
            agreement_words(r.verdict, margin),
        ]
        for r in agreement.sort_values(["dataset", "embedding_size", "variant", "_rank"]).itertuples()
    ]
    return "\n".join(
        [
            *lines,
            "",
            markdown_table(
                [
                    "dataset",
                    "size",
                    "loss",
                    "seeds (ours / ref)",
                    "ours %",
                    "reference %",
                    "diff [95% CI]",
                    "shown within",
                    f"TOST Holm p (±{margin:g})",
                    "Welch Holm p",
                    "verdict",
                ],
                rows,
            ),
        ]
    )


def default_reference(exp_dir: Path, experiment: str, root: Path) -> Path | None:
    """``root/<experiment>`` when it exists and is not the folder being reported, else None."""
    candidate = Path(root) / experiment
    if not (candidate / "cells.csv").is_file() or candidate.resolve() == Path(exp_dir).resolve():
        return None
    return candidate
