"""Drawing the report's (and the tuning summary's) figures with seaborn on the Agg backend, as PNG and SVG.

Every function takes tidy tables already in percent (the report converts), draws one figure,
writes ``<stem>.png`` and ``<stem>.svg`` and returns both paths. Colours, markers and line styles
follow one assignment per report (:func:`label_styles`), so a loss looks the same in every figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from harness.stats import t_interval

LineStyle = dict[str, Any]
"""Keyword arguments of ``Axes.plot`` for one label: ``color``, ``marker``, ``linestyle``."""
Styles = Mapping[str, LineStyle]

PAPER_STYLE: LineStyle = {"color": "black", "marker": "D", "markersize": 7, "linestyle": "none", "zorder": 5}
_DPI = 130
_MAX_BINS = 200  # training curves: iterations are averaged into at most this many bins
_MAX_WEIGHTS = 4000  # pair weights: at most this many drawn per (loss, pair kind)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_DASHES = ("-", "--", "-.", ":")
_MARKS_PER_LINE = 9  # markers drawn along a line of many points
CUT_QUANTILE = 0.01
"""Pair weights: a log axis is cut at this quantile of its weights (all losses pooled) ..."""
CUT_DECADES = 3.0
"""... when the weights below it span more than this many decades."""
_DODGE = 0.05  # recall curves: horizontal offset between losses, in units of one log step of the axis


def label_styles(labels: Sequence[str]) -> dict[str, LineStyle]:
    """One colour, marker and line style per label, in the given order, so that lines which lie on top of
    each other stay apart: tab10 without its grey (grey and black mark the legends' style keys), tab20
    for more than 9 labels; markers and dash patterns cycle at other periods than the colours."""
    tab10 = sns.color_palette("tab10", 10)
    colours = (
        [c for i, c in enumerate(tab10) if i != 7] if len(labels) <= 9 else sns.color_palette("tab20", 20)
    )
    return {
        label: {
            "color": tuple(colours[i % len(colours)]),
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _DASHES[i % len(_DASHES)],
        }
        for i, label in enumerate(labels)
    }


@contextmanager
def figure_style() -> Iterator[None]:
    """The report's one look: seaborn whitegrid, a slightly smaller notebook context."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and .svg, then close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"
    fig.savefig(png, dpi=_DPI, bbox_inches="tight")
    with plt.rc_context({"svg.hashsalt": stem.name}):  # fixed ids, no date: reruns give the same file
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return [png, svg]


def legend_outside(
    ax: plt.Axes,
    handles: Sequence[Artist | tuple[Artist, ...]] | None = None,
    labels: Sequence[str] | None = None,
    **kwargs: Any,
) -> None:
    if handles is None or labels is None:  # the two come together
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _log_ticks(ax: plt.Axes, values: Sequence[int], base: int = 2) -> None:
    """A log x axis whose ticks are exactly ``values`` (e.g. the K of Recall@K), labelled as integers."""
    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(FixedLocator(list(values)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(v) for v in values])


def ablation_dots(
    runs: pd.DataFrame,
    paper: pd.DataFrame,
    *,
    order: Sequence[str],
    weights_labels: Mapping[str, str],
    title: str,
    ylabel: str,
    stem: Path,
) -> list[Path]:
    """Each seed as a small dot, the mean over seeds with its 95% t CI as a larger marker and bar, per loss
    and kind of weights (dodged side by side when there are several), the paper's value as a black diamond.

    ``runs``: columns ``row, weights, value`` (one row per seed). ``paper``: columns ``row, recall``
    (may be empty). ``weights_labels`` maps ``weights`` to its legend text, in drawing order. No bars:
    the y axis spans the data, and a dot plot has no area that would have to start at 0. The legend's
    handles are drawn artists (the first of each kind), so every entry is something on the axes.
    """
    kinds = list(weights_labels)
    colours = dict(zip(kinds, sns.color_palette("Dark2", len(kinds)), strict=True))
    offsets = dict(zip(kinds, np.linspace(-0.14, 0.14, len(kinds)) if len(kinds) > 1 else [0.0], strict=True))
    legend: dict[str, Artist | tuple[Artist, ...]] = {}  # legend text -> the first artist drawn for it
    with figure_style():
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(order) + 2.5), 4.6))
        for i, row in enumerate(order):
            for kind in kinds:
                values = runs.loc[(runs["row"] == row) & (runs["weights"] == kind), "value"].to_numpy(float)
                if not len(values):
                    continue
                x = i + offsets[kind]
                (dots,) = ax.plot(
                    np.full(len(values), x),
                    values,
                    linestyle="none",
                    marker="o",
                    markersize=3.5,
                    alpha=0.55,
                    markerfacecolor="none",
                    color=colours[kind],
                )
                legend.setdefault("one seed" + (f" ({weights_labels[kind]})" if len(kinds) > 1 else ""), dots)
                mean = float(values.mean())
                low, high = t_interval(values)
                err = None if math.isnan(low) else [[mean - low], [high - mean]]
                bar = ax.errorbar(
                    [x],
                    [mean],
                    yerr=err,
                    marker="_",
                    markersize=16,
                    markeredgewidth=2.2,
                    capsize=4,
                    linestyle="none",
                    color=colours[kind],
                    zorder=4,
                )
                legend.setdefault(f"{weights_labels[kind]}: mean, 95% CI", bar)
        positions = {row: i for i, row in enumerate(order)}
        for row, value in zip(paper["row"], paper["recall"], strict=True):
            (diamond,) = ax.plot([positions[row]], [value], **PAPER_STYLE)
            legend.setdefault("paper", diamond)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(list(order), rotation=30, ha="right")
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_xlabel("loss (paper's ablation row)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ranked = sorted(legend, key=lambda text: 2 if text == "paper" else int(text.startswith("one seed")))
        legend_outside(ax, [legend[text] for text in ranked], ranked)
        return save_figure(fig, stem)


def _band(ax: plt.Axes, x: np.ndarray, low: np.ndarray, high: np.ndarray, colour) -> None:
    ok = np.isfinite(low) & np.isfinite(high)
    if ok.any():
        ax.fill_between(x[ok], low[ok], high[ok], color=colour, alpha=0.18, linewidth=0)


def recall_curves(
    summary: pd.DataFrame,
    paper: pd.DataFrame,
    *,
    panels: Sequence[tuple[object, str]],
    panel_column: str,
    order: Sequence[str],
    styles: Styles,
    title: str,
    stem: Path,
) -> list[Path]:
    """Recall@K against K, one panel per ``panels`` entry (value of ``panel_column``, panel title).

    ``summary``: ``row, k, mean, ci_low, ci_high`` and ``panel_column``; ours solid with a 95% CI band,
    each loss with its own marker and shifted a little along K so that equal curves stay visible. One
    panel is titled in the figure's title; several get their own titles.
    ``paper``: ``row, k, recall`` and ``panel_column``; dashed with hollow markers, same colour (only
    the K of ``summary`` are on the axis).
    """
    ks = sorted({int(k) for k in summary["k"]})
    return _ours_vs_paper(
        summary,
        paper,
        x="k",
        ticks=ks,
        base=10 if max(ks) > 64 else 2,
        xlabel="K (log scale)",
        ylabel="Recall@K on the test set (%)",
        ours_label="loss (ours: line, band: 95% CI)",
        paper_style={"linestyle": "--", "marker": "s", "markersize": 5, "markerfacecolor": "white"},
        panels=panels,
        panel_column=panel_column,
        order=order,
        styles=styles,
        title=title,
        note="",
        stem=stem,
    )


def embedding_size_curves(
    summary: pd.DataFrame,
    paper: pd.DataFrame,
    *,
    panels: Sequence[tuple[object, str]],
    panel_column: str,
    order: Sequence[str],
    styles: Styles,
    title: str,
    note: str,
    stem: Path,
) -> list[Path]:
    """Recall@1 against embedding size: ours with 95% CI error bars, the paper's points as hollow diamonds.

    ``summary``: ``row, embedding_size, mean, ci_low, ci_high`` and ``panel_column``; ``paper``:
    ``row, embedding_size, recall`` (the same points in every panel). ``note`` goes under the figure.
    """
    sizes = sorted({int(s) for s in summary["embedding_size"]} | {int(s) for s in paper["embedding_size"]})
    return _ours_vs_paper(
        summary,
        paper,
        x="embedding_size",
        ticks=sizes,
        base=2,
        xlabel="embedding size (dimensions, log scale)",
        ylabel="Recall@1 on the test set (%)",
        ours_label="loss (ours: mean, bars: 95% CI)",
        paper_style={
            "linestyle": "none",
            "marker": "D",
            "markersize": 8,
            "markerfacecolor": "white",
            "markeredgewidth": 1.6,
        },
        panels=panels,
        panel_column=panel_column,
        order=order,
        styles=styles,
        title=title,
        note=note,
        stem=stem,
    )


def _ours_vs_paper(
    summary: pd.DataFrame,
    paper: pd.DataFrame,
    *,
    x: str,
    ticks: Sequence[int],
    base: int,
    xlabel: str,
    ylabel: str,
    ours_label: str,
    paper_style: dict,
    panels: Sequence[tuple[object, str]],
    panel_column: str,
    order: Sequence[str],
    styles: Styles,
    title: str,
    note: str,
    stem: Path,
) -> list[Path]:
    """Panels of ours (mean, with a CI band for a K axis or CI error bars for sizes) against the paper.

    The legend's loss entries are the lines drawn for ours (their first drawing); ``ours_label`` is
    the legend's title, saying how ours is drawn; "paper" is a black key in the paper's line style.
    """
    drawn: dict[str, Artist] = {}  # loss -> its first drawn line of ours (the legend handle)
    with figure_style():
        fig, axes = plt.subplots(
            1, len(panels), figsize=(4.6 * len(panels) + 2.2, 4.3), squeeze=False, sharey=True
        )
        for ax, (panel, panel_title) in zip(axes[0], panels, strict=True):
            ours = summary[summary[panel_column] == panel]
            theirs = paper[paper[panel_column] == panel] if panel_column in paper else paper
            shift = dict(
                zip(order, base ** (_DODGE * (np.arange(len(order)) - (len(order) - 1) / 2)), strict=True)
            )
            for row in order:
                mine = ours[ours["row"] == row].sort_values(x)
                xs, mean = mine[x].to_numpy(float) * shift[row], mine["mean"].to_numpy(float)
                low, high = mine["ci_low"].to_numpy(float), mine["ci_high"].to_numpy(float)
                look = {"color": styles[row]["color"], "marker": styles[row]["marker"], "markersize": 5}
                if x == "k" and len(mine):
                    (line,) = ax.plot(xs, mean, **look)
                    drawn.setdefault(row, line)
                    _band(ax, xs, low, high, styles[row]["color"])
                elif len(mine):
                    err = np.nan_to_num(np.vstack([mean - low, high - mean]))
                    drawn.setdefault(row, ax.errorbar(xs, mean, yerr=err, capsize=3, **look))
                ref = theirs[theirs["row"] == row].sort_values(x)
                if len(ref):
                    ax.plot(ref[x], ref["recall"], color=styles[row]["color"], **paper_style)
            _log_ticks(ax, ticks, base=base)
            ax.set_xlabel(xlabel)
            if len(panels) > 1:
                ax.set_title(panel_title)
        axes[0][0].set_ylabel(ylabel)
        shown = [r for r in order if r in drawn]
        handles, labels = [drawn[r] for r in shown], list(shown)
        if len(paper):
            handles.append(Line2D([], [], color="black", **paper_style))
            labels.append("paper")
        legend_outside(axes[0][-1], handles, labels, title=ours_label)
        fig.suptitle(title if len(panels) > 1 else f"{title} ({panels[0][1]})")
        if note:
            fig.text(0.01, -0.02, note, ha="left", va="top", fontsize="small", wrap=True)
        return save_figure(fig, stem)


def _binned(log: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean of ``column`` per (row, seed, iteration), iterations averaged in bins when there are more
    than :data:`_MAX_BINS` of them (x = the bin's centre)."""
    data = log.dropna(subset=[column])
    if data.empty:
        return data
    width = math.ceil(float(data["iteration"].max()) / _MAX_BINS)
    if data["iteration"].nunique() > _MAX_BINS and width > 1:
        data = data.assign(iteration=(np.floor((data["iteration"] - 1) / width) + 0.5) * width)
    out = data.groupby(["row", "seed", "iteration"], as_index=False)[column].mean()
    return out.rename(columns={column: "y"})


def _iteration_ticks(ax: plt.Axes, iterations: Sequence[float]) -> None:
    """x ticks exactly at ``iterations`` (the evaluation points) when there are few of them."""
    distinct = sorted({float(i) for i in iterations})
    if 0 < len(distinct) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(distinct))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mean_sd_lines(ax: plt.Axes, binned: pd.DataFrame, rows: Sequence[str], styles: Styles) -> None:
    """Per row: the mean of ``y`` over seeds against the iteration, with a +-1 SD band."""
    for i, row in enumerate(rows):
        per_iteration = binned[binned["row"] == row].groupby("iteration")["y"]
        mean, sd = per_iteration.mean(), per_iteration.std(ddof=1).fillna(0.0)
        xs = mean.index.to_numpy(float)
        step = max(
            1, len(xs) // _MARKS_PER_LINE
        )  # markers staggered between rows: equal lines stay told apart
        ax.plot(xs, mean.to_numpy(), markevery=(i % step, step), markersize=4, linewidth=1.4, **styles[row])
        _band(ax, xs, (mean - sd).to_numpy(), (mean + sd).to_numpy(), styles[row]["color"])


def _name_constant_lines(ax: plt.Axes, binned: pd.DataFrame, rows: Sequence[str]) -> None:
    """Name, above the panel, the rows whose lines are one same constant (they lie on top of each other)."""
    constant: dict[float, list[str]] = {}
    for row in rows:
        values = binned.loc[binned["row"] == row, "y"].to_numpy(float)
        if len(values) and np.ptp(values) == 0:
            constant.setdefault(float(values[0]), []).append(row)
    notes = [
        f"{_listed(together)}: {value:g} pairs at every iteration (these lines lie on top of each other)"
        for value, together in constant.items()
        if len(together) > 1
    ]
    if notes:
        ax.set_title(textwrap.fill("; ".join(notes), 70), fontsize="small", loc="left")


def _listed(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def training_curves(
    train_log: pd.DataFrame,
    evals: pd.DataFrame,
    *,
    order: Sequence[str],
    styles: Styles,
    eval_label: str,
    title: str,
    stem: Path,
) -> list[Path]:
    """Four panels over iterations: training loss, R@1 during training, mined positive and negative pairs.

    ``train_log``: ``row, seed, iteration, loss, pos_pairs, neg_pairs``; ``evals``: ``row, seed,
    iteration, value`` (R@1 in percent on the split named by ``eval_label``). Lines: mean over seeds,
    band: +-1 standard deviation over seeds. The training loss of each loss is divided by its mean
    first logged value (losses of different scales share one axis; the legend gives that value).
    Evaluations are marked, with x ticks at the iterations evaluated; pair counts go to a log axis
    when they span more than a factor of 20, and losses whose count never changes are named on the panel.
    """
    relative, starts = _relative_loss(train_log)
    panels = [
        (relative, "loss", "training loss ÷ its first logged value"),
        (evals.rename(columns={"value": "r1"}), "r1", f"Recall@1 on {eval_label} (%)"),
        (train_log, "pos_pairs", "mined positive pairs per batch"),
        (train_log, "neg_pairs", "mined negative pairs per batch"),
    ]
    last = max([float(d["iteration"].max()) for d, c, _ in panels if c in d and len(d)] or [1.0])
    with figure_style():
        fig, axes = plt.subplots(2, 2, figsize=(12.0, 7.5))
        for ax, (data, column, ylabel) in zip(axes.flat, panels, strict=True):
            binned = _binned(data, column) if column in data else pd.DataFrame()
            if binned.empty:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            else:
                present = [r for r in order if (binned["row"] == r).any()]
                _mean_sd_lines(ax, binned, present, styles)
                if column.endswith("_pairs"):
                    if (binned["y"] > 0).all() and binned["y"].max() > 20 * binned["y"].min():
                        ax.set_yscale("log")  # counts of very different sizes
                        ylabel += " (log scale)"
                    _name_constant_lines(ax, binned, present)
            if column == "r1" and not binned.empty:
                _iteration_ticks(ax, binned["iteration"])
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(0, last * 1.02)
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
        present = [r for r in order if (train_log["row"] == r).any() or (evals["row"] == r).any()]
        handles = [Line2D([], [], linewidth=1.4, markersize=5, **styles[r]) for r in present]
        labels = [f"{r} (first loss {starts[r]:.2f})" if r in starts else r for r in present]
        legend_outside(axes[0][1], handles, labels, title="loss (band: ±1 SD over seeds)")
        fig.suptitle(title)
        fig.tight_layout()
        return save_figure(fig, stem)


def _relative_loss(train_log: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """The training log with ``loss`` divided by each row's mean loss at its first logged iteration."""
    if "loss" not in train_log or train_log.empty:
        return train_log, {}
    logged = train_log.dropna(subset=["loss"])
    first = logged[logged["iteration"] == logged.groupby("row")["iteration"].transform("min")]
    starts = first.groupby("row")["loss"].mean()
    usable = starts[starts > 0]
    relative = logged[logged["row"].isin(usable.index)]
    relative = relative.assign(loss=relative["loss"] / relative["row"].map(usable))
    return relative, {str(row): float(value) for row, value in usable.items()}


def _cut_long_tail(ax: plt.Axes, weights: pd.DataFrame, kind: str) -> str:
    """Cut the log axis of one kind of pair weights at their :data:`CUT_QUANTILE` quantile when the tail
    below it spans more than :data:`CUT_DECADES` decades; the note saying so, or '' when not cut."""
    values = weights["weight"].to_numpy(float)
    floor = float(np.quantile(values, CUT_QUANTILE))
    if not math.log10(floor / float(values.min())) > CUT_DECADES:
        return ""
    ax.set_ylim(bottom=floor)
    below = weights.assign(below=values < floor).groupby("row")["below"].mean().sort_values(ascending=False)
    shares = ", ".join(f"{row} {100 * share:.1f}%" for row, share in below.items() if share >= 0.001)
    return (
        f"Axis cut at {floor:.1e}, the {100 * CUT_QUANTILE:g}% quantile of all {kind} weights (the "
        f"smallest is {values.min():.0e}); pairs below it, share of each loss's pairs: {shares}."
    )


def pair_weight_distributions(
    weights: pd.DataFrame, *, order: Sequence[str], title: str, stem: Path, seed: int = 0
) -> list[Path]:
    """Violins of the pair weights |dL/dS| per loss, one panel per kind of pair, each with its own log axis.

    ``weights``: ``row, kind ("positive"|"negative"), weight`` (non-positive weights are dropped:
    log scale). Each tick label says how many pairs of that kind there were; at most
    :data:`_MAX_WEIGHTS` per (loss, kind) are drawn, a fixed-seed random subset. Positive weights
    cluster in a narrow band and negative ones spread over many decades: one shared axis would flatten
    the positive ones into a line. An axis whose weights reach more than :data:`CUT_DECADES` decades
    below their :data:`CUT_QUANTILE` quantile (all losses pooled) is cut there, and the panel says so
    and which losses have pairs below (one loss's tail would otherwise squash every other violin).
    """
    data = weights[weights["weight"] > 0]
    counts = data.groupby(["row", "kind"]).size()
    rng = np.random.default_rng(seed)
    parts = []
    for _, group in data.groupby(["row", "kind"], sort=False):
        keep = rng.choice(len(group), size=min(len(group), _MAX_WEIGHTS), replace=False)
        parts.append(group.iloc[np.sort(keep)])
    drawn = pd.concat(parts, ignore_index=True)
    present = [r for r in order if (drawn["row"] == r).any()]
    kinds = [k for k in ("positive", "negative") if (drawn["kind"] == k).any()]
    colours = {"positive": "#4C72B0", "negative": "#DD8452"}
    with figure_style():
        fig, axes = plt.subplots(
            len(kinds), 1, figsize=(max(6.0, 1.1 * len(present) + 2.0), 3.4 * len(kinds)), squeeze=False
        )
        for ax, kind in zip(axes[:, 0], kinds, strict=True):
            sns.violinplot(
                drawn[drawn["kind"] == kind],
                x="row",
                y="weight",
                order=present,
                log_scale=True,
                inner="quart",
                density_norm="width",
                cut=0,
                linewidth=0.8,
                color=colours[kind],
                ax=ax,
            )
            note = _cut_long_tail(ax, data[data["kind"] == kind], kind)
            if note:
                ax.set_title(textwrap.fill(note, 120), fontsize="small", loc="left")
            ax.set_xticks(range(len(present)))
            ax.set_xticklabels([f"{r}\n{counts.get((r, kind), 0)} pairs" for r in present])
            ax.set_xlabel("")
            ax.set_ylabel(f"{kind} pairs: |∂L/∂S|\n(log scale)")
        axes[-1, 0].set_xlabel("loss (pairs with non-zero weight at the end of training, all seeds)")
        axes[0, 0].set_title(title)
        fig.tight_layout()
        return save_figure(fig, stem)


def intermediate_values(
    values: pd.DataFrame, *, best_trial: int | None, ylabel: str, title: str, stem: Path
) -> list[Path]:
    """The values a tuning study's trials reported at each step, coloured by trial number.

    ``values``: ``trial, state ("complete"|"pruned"|...), step, value``, one row per reported value.
    Completed trials: lines in a sequential colour map (colour bar: trial number, instead of a legend
    entry per trial); pruned trials: thin grey lines ending in a cross where they were stopped; the best
    trial: black. x ticks at the steps reported, when there are few.
    """
    trials = sorted(set(values["trial"]))
    colour_map = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=min(trials, default=0), vmax=max(max(trials, default=1), 1))
    with figure_style():
        fig, ax = plt.subplots(figsize=(8.0, 4.6))
        for trial, curve in values.sort_values("step").groupby("trial"):
            state, steps, ys = (
                str(curve["state"].iloc[0]),
                curve["step"].to_numpy(float),
                curve["value"].to_numpy(float),
            )
            if trial == best_trial:
                ax.plot(steps, ys, color="black", linewidth=2.4, marker="o", markersize=4, zorder=5)
            elif state == "pruned":
                ax.plot(steps, ys, color="0.6", linewidth=0.9, marker="o", markersize=2.5, zorder=2)
                ax.plot(
                    steps[-1:], ys[-1:], color="0.35", marker="x", markersize=6, linestyle="none", zorder=3
                )
            else:
                ax.plot(
                    steps,
                    ys,
                    color=colour_map(norm(trial)),
                    linewidth=1.3,
                    marker="o",
                    markersize=3,
                    zorder=4,
                )
        _iteration_ticks(ax, values["step"])
        ax.set_xlabel("training iteration (evaluation step)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=colour_map)
        bar = fig.colorbar(mappable, ax=ax, pad=0.02)
        bar.set_label("trial number (completed trials)")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        handles, labels = [], []  # an entry only for what is drawn
        states = set(values.loc[values["trial"] != best_trial, "state"])
        if states - {"pruned"}:
            handles.append(Line2D([], [], color=colour_map(0.6), linewidth=1.3))
            labels.append("completed")
        if "pruned" in states:
            handles.append(Line2D([], [], color="0.6", marker="x", markeredgecolor="0.35", linewidth=0.9))
            labels.append("pruned (× where stopped)")
        if best_trial is not None:
            handles.append(Line2D([], [], color="black", linewidth=2.4))
            labels.append(f"best: trial {best_trial}")
        ax.legend(handles, labels, loc="lower right", fontsize="small")
        return save_figure(fig, stem)
