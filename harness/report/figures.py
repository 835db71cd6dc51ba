"""Which figures the report draws for an experiment, with their captions, and the report's Figures section."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report import plots
from harness.report.reading import DATASET_NAMES, FIGURE_FAMILY, ReportContext, with_k
from harness.report.tables import esc, select, weights_shown


@dataclass
class Figure:
    """A drawn figure: its title, files (PNG first, then SVG) and caption."""

    title: str
    files: list[Path]
    caption: str = ""


@dataclass
class Skipped:
    """A figure that could not be drawn, and why."""

    title: str
    reason: str


def slug(*parts: object) -> str:
    """A file-name stem from parts ('' parts left out)."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-") for p in parts if str(p) != "")


def variant_slug(variant: str) -> str:
    """The variant in a file name ('' for the default variant)."""
    return "" if variant == "default" else variant


def family_name(ctx: ReportContext, dataset: str, size: object, variant: str) -> str:
    """A figure family in a title: 'Cars-196, embedding 64' (and the variant when there are several)."""
    name = DATASET_NAMES.get(dataset, dataset).split(" (")[0]
    return f"{name}, embedding {size}" + (f", variant {variant}" if ctx.many_variants else "")


def _panels(ctx: ReportContext, frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The one kind of weights a figure draws, the first ``frame`` has (selected, else final): [(weights,
    short title)]; :func:`_other_weights_note` says how far the other kind lies from it."""
    return [(w, ctx.weights_titles[w].split(" (")[0]) for w in weights_shown(frame)[:1]]


def _other_weights_note(ctx: ReportContext, frame: pd.DataFrame, by: list[str], value: str) -> str:
    """The sentence saying which kind of weights a figure leaves out and by how much its means differ from
    the drawn ones at most (over the rows and ``by``); '' when ``frame`` has one kind only."""
    shown = weights_shown(frame)
    if len(shown) < 2:
        return ""
    means = frame.groupby(["row", *by, "weights"])[value].mean().unstack("weights")
    sentences = []
    for other in shown[1:]:
        gap = (means[other] - means[shown[0]]).abs().dropna()
        if gap.empty:
            continue
        worst = gap.idxmax()
        where = worst[0] if isinstance(worst, tuple) else worst
        sentences.append(
            f"Not drawn: the {ctx.weights_titles[other].split(' (')[0]}, whose means differ from the drawn "
            f"{ctx.weights_titles[shown[0]].split(' (')[0]} by at most {gap.max():.2f} points "
            f"(largest for {esc(where)}); the tables give both."
        )
    return " ".join(sentences)


def report_figures(ctx: ReportContext, compared: pd.DataFrame) -> list[Figure | Skipped]:
    """Draw every figure of the report into ``<experiment>/figures/`` (or say why one is skipped)."""
    figures_dir = ctx.exp_dir / "figures"
    styles = plots.label_styles(ctx.order)
    test = ctx.finished[ctx.finished["split"] == "test"]
    if test.empty:
        return [Skipped("all figures", "no finished cell has test-set results")]
    recall = with_k(compared)
    reference = _reference_by_row(ctx)
    families = list(test.groupby(list(FIGURE_FAMILY), sort=True))
    out: list[Figure | Skipped] = []
    for (dataset, size, variant), block in families:
        stem = figures_dir / slug("ablation", dataset, f"d{size}", variant_slug(variant))
        out.append(_ablation_figure(ctx, block, reference, family_name(ctx, dataset, size, variant), stem))
    for key, _ in families:
        out.append(_recall_figure(ctx, recall, reference, styles, key, figures_dir))
    out += _size_figures(ctx, recall, reference, styles, figures_dir)
    out += _cell_file_figures(ctx, styles, figures_dir)
    return out


def _reference_by_row(ctx: ReportContext) -> pd.DataFrame:
    """The paper's values for each of our rows (by its loss) at every dataset, size and K the paper has."""
    loss_of = ctx.finished.drop_duplicates("row")[["row", "loss"]]
    return ctx.reference.merge(loss_of, on="loss")


def _tables_of(paper: pd.DataFrame) -> str:
    """'2, 3' for the paper tables a set of reference rows comes from."""
    return ", ".join(sorted({t for tables in paper["tables"] for t in str(tables).split(", ")}, key=int))


def _ablation_figure(
    ctx: ReportContext, block: pd.DataFrame, reference: pd.DataFrame, name: str, stem: Path
) -> Figure | Skipped:
    title = f"Ablation: {name}"
    r1 = block[block["metric"] == "recall@1"]
    present = ctx.ordered(r1["row"])
    if len(present) < 2:
        return Skipped(title, f"only one loss ({present[0] if present else 'none'}) has test Recall@1 here")
    dataset, size = block["dataset"].iloc[0], block["embedding_size"].iloc[0]
    paper = select(reference, dataset=dataset, embedding_size=size, k=1)
    paper = paper[paper["row"].isin(present)][["row", "recall"]]
    paper = paper.assign(_rank=paper["row"].map(present.index)).sort_values("_rank").drop(columns="_rank")
    panels = _panels(ctx, r1)
    files = plots.ablation_dots(
        r1.loc[r1["weights"] == panels[0][0], ["row", "weights", "value"]],
        paper,
        order=present,
        weights_labels=dict(panels),
        title=f"{title} (seeds, mean, 95% t CI)",
        ylabel="Recall@1 on the test set (%)",
        stem=stem,
    )
    caption = (
        "Paper values (black diamonds): "
        + ", ".join(f"{esc(r)} {v:.1f}" for r, v in zip(paper["row"], paper["recall"], strict=True))
        + "."
        if len(paper)
        else "No paper values for this dataset and size."
    )
    return Figure(
        title,
        files,
        caption + " Hollow dots: one seed each; bars: the mean with its 95% t interval (no bars drawn "
        "from an arbitrary floor: the y axis spans the data). " + _other_weights_note(ctx, r1, [], "value"),
    )


def _recall_figure(ctx, recall, reference, styles, key, figures_dir) -> Figure | Skipped:
    dataset, size, variant = key
    title = f"Recall@K: {family_name(ctx, dataset, size, variant)}"
    ours = select(recall, dataset=dataset, embedding_size=size, variant=variant)
    if ours["k"].nunique() < 2:
        return Skipped(title, "fewer than two K values measured")
    paper = select(reference, dataset=dataset, embedding_size=size)
    paper = paper[paper["row"].isin(set(ours["row"])) & paper["k"].isin(set(ours["k"]))]
    panels = _panels(ctx, ours)
    paper_panels = pd.concat([paper.assign(weights=w) for w, _ in panels], ignore_index=True)
    files = plots.recall_curves(
        ours,
        paper_panels,
        panels=panels,
        panel_column="weights",
        order=ctx.ordered(ours["row"]),
        styles=styles,
        title=title,
        stem=figures_dir / slug("recall_at_k", dataset, f"d{size}", variant_slug(variant)),
    )
    caption = (
        f"Dashed: the paper (Table(s) {_tables_of(paper)})."
        if len(paper)
        else "No paper values for these losses at this dataset and size."
    )
    return Figure(
        title,
        files,
        caption + " Each loss has its own marker and is shifted a little along K, so "
        "that equal curves do not hide each other. " + _other_weights_note(ctx, ours, ["k"], "mean"),
    )


def _size_figures(ctx, recall, reference, styles, figures_dir) -> list[Figure | Skipped]:
    out: list[Figure | Skipped] = []
    r1 = recall[recall["k"] == 1]
    for (dataset, variant), block in r1.groupby(["dataset", "variant"], sort=True):
        name = DATASET_NAMES.get(dataset, dataset).split(" (")[0] + (
            f", variant {variant}" if ctx.many_variants else ""
        )
        title = f"Recall@1 against embedding size: {name}"
        sizes = sorted(set(block["embedding_size"]))
        if len(sizes) < 2:
            out.append(Skipped(title, f"no embedding-size sweep in this experiment (size {sizes[0]} only)"))
            continue
        paper = select(reference, dataset=dataset, k=1)
        paper = paper[paper["row"].isin(set(block["row"]))]
        note = (
            "The paper gives its embedding-size study (Fig. 3) only as a figure; the paper points are the "
            f"printed values of Table(s) {_tables_of(paper)} at the sizes it reports."
            if len(paper)
            else "No paper values for these losses on this dataset."
        )
        files = plots.embedding_size_curves(
            block,
            paper,
            panels=_panels(ctx, block),
            panel_column="weights",
            order=ctx.ordered(block["row"]),
            styles=styles,
            title=title,
            note=note,
            stem=figures_dir / slug("embedding_size", dataset, variant_slug(variant)),
        )
        out.append(
            Figure(title, files, f"{note} {_other_weights_note(ctx, block, ['embedding_size'], 'mean')}")
        )
    return out


def _cell_file_figures(ctx: ReportContext, styles: plots.Styles, figures_dir: Path) -> list[Figure | Skipped]:
    out: list[Figure | Skipped] = []
    logs, evals, weights = ctx.files.train_log, ctx.files.evals, ctx.files.weights
    for key, _ in ctx.finished.groupby(list(FIGURE_FAMILY), sort=True):
        dataset, size, variant = key
        name = family_name(ctx, dataset, size, variant)
        tag = dict(zip(FIGURE_FAMILY, key, strict=True))
        log, ev, wt = (select(f, **tag) if len(f) else f for f in (logs, evals, weights))
        title = f"Training curves: {name}"
        if len(log) == 0 and len(ev) == 0:
            out.append(Skipped(title, "no readable `train_log.csv` or `evals.csv` in the finished cells"))
        else:
            split = sorted(set(ev["split"])) if len(ev) else ["val"]
            label = {"val": "the validation split", "test": "the test split"}.get(
                "/".join(split), "/".join(split)
            )
            files = plots.training_curves(
                log,
                ev,
                order=ctx.ordered([*log.get("row", []), *ev.get("row", [])]),
                styles=styles,
                eval_label=label,
                title=title,
                stem=figures_dir / slug("training", dataset, f"d{size}", variant_slug(variant)),
            )
            out.append(
                Figure(
                    title,
                    files,
                    f"Recall@1 measured during training on {label} (x ticks: the "
                    "iterations evaluated); lines: mean over seeds, bands: ±1 SD. The "
                    "training loss of each loss is divided by its first logged value "
                    "(in the legend), so losses of different scales share one axis.",
                )
            )
        title = f"Pair weights at the end of training: {name}"
        if len(wt) == 0 or not (wt["weight"] > 0).any():
            out.append(Skipped(title, "no `pair_weights.npz` with non-zero weights in the finished cells"))
        else:
            files = plots.pair_weight_distributions(
                wt,
                order=ctx.ordered(wt["row"]),
                title=title,
                stem=figures_dir / slug("pair_weights", dataset, f"d{size}", variant_slug(variant)),
            )
            out.append(
                Figure(
                    title,
                    files,
                    "The GPW view: the weight |∂L/∂S| each loss gives the selected "
                    "positive and negative pairs of a few training batches after the "
                    "last iteration (all seeds pooled); positive and negative pairs "
                    f"each on their own log axis. An axis whose weights reach more than "
                    f"{plots.CUT_DECADES:g} decades below their {100 * plots.CUT_QUANTILE:g}% quantile "
                    "is cut there; the panel says so and which losses have pairs below.",
                )
            )
    return out


def figure_markdown(ctx: ReportContext, item: Figure | Skipped) -> str:
    """A figure's heading, PNG, caption and SVG link, or the line saying why it was skipped."""
    if isinstance(item, Skipped):
        return f"\n- *{esc(item.title)}*: skipped: {item.reason}."
    png = item.files[0].relative_to(ctx.exp_dir).as_posix()
    svg = item.files[1].relative_to(ctx.exp_dir).as_posix()
    return f"\n#### {esc(item.title)}\n\n![{esc(item.title)}]({png})\n\n{item.caption.strip()} ([SVG]({svg}))"


def figures_section(ctx: ReportContext, figures: list[Figure | Skipped], note: str = "") -> str:
    """The Figures section: each figure's PNG, caption and SVG link, or why it was skipped; ``note``: one
    more line under the section's first (e.g. why there are no retrieval examples)."""
    lines = ["## Figures", "", "PNG shown; an SVG of each lies beside it in `figures/`."]
    lines += ["", note] if note else []
    lines += [figure_markdown(ctx, item).replace("\n#### ", "\n### ", 1) for item in figures]
    return "\n".join(lines)
