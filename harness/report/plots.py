"""The report's figures (seaborn on the non-interactive Agg backend), each saved as PNG and SVG.

Every function takes tidy tables already in percent (the report converts), draws one figure,
writes ``<stem>.png`` and ``<stem>.svg`` and returns both paths. Colours follow one palette per
report (:func:`label_palette`) so a loss has the same colour in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from harness.stats import t_interval

Palette = Mapping[str, tuple[float, float, float]]

PAPER_STYLE = {"color": "black", "marker": "D", "markersize": 7, "linestyle": "none", "zorder": 5}
_DPI = 130
_MAX_BINS = 200  # training curves: iterations are averaged into at most this many bins
_MAX_WEIGHTS = 4000  # pair weights: at most this many drawn per (loss, pair kind)


def label_palette(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per label, in the given order: tab10 without its grey (grey and black mark line
    styles in the legends), then tab20 for more than 9 labels."""
    tab10 = sns.color_palette("tab10", 10)
    colours = [c for i, c in enumerate(tab10) if i != 7] if len(labels) <= 9 else sns.color_palette("tab20", 20)
    return {label: tuple(colours[i % len(colours)]) for i, label in enumerate(labels)}


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and .svg, then close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"
    fig.savefig(png, dpi=_DPI, bbox_inches="tight")
    with plt.rc_context({"svg.hashsalt": stem.name}):  # fixed ids, no date: reruns give the same file
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return [png, svg]


def _legend_outside(ax: plt.Axes, handles: list | None = None, labels: list[str] | None = None, **kwargs) -> None:
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _log_ticks(ax: plt.Axes, values: Sequence[int], base: int = 2) -> None:
    """A log x axis whose ticks are exactly ``values`` (e.g. the K of Recall@K), labelled as integers."""
    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(FixedLocator(list(values)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(v) for v in values])


def _nice_floor(values: Sequence[float]) -> float:
    """A round lower y limit a little below the data (bars of close recalls stay comparable)."""
    finite = [v for v in values if math.isfinite(v)]
    low = min(finite) if finite else 0.0
    return max(0.0, 10.0 * math.floor((low - 5.0) / 10.0))


def ablation_bars(
    runs: pd.DataFrame, paper: pd.DataFrame, *, order: Sequence[str], weights_labels: Mapping[str, str],
    title: str, ylabel: str, stem: Path,
) -> list[Path]:
    """Bars of the mean over seeds per loss, one bar per weights, 95% t CI error bars, paper as markers.

    ``runs``: columns ``row, weights, value`` (one row per seed). ``paper``: columns ``row, recall``
    (may be empty). ``weights_labels`` maps ``weights`` to its legend text, in drawing order.
    """
    with _style():
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(order) + 2.5), 4.6))
        sns.barplot(
            runs, x="row", y="value", hue="weights", order=list(order), hue_order=list(weights_labels),
            errorbar=t_interval, capsize=0.15, err_kws={"linewidth": 1.2},
            palette=dict(zip(weights_labels, sns.color_palette("Set2", len(weights_labels)), strict=True)), ax=ax,
        )  # fmt: skip
        positions = {row: i for i, row in enumerate(order)}
        for row, value in zip(paper["row"], paper["recall"], strict=True):
            ax.hlines(value, positions[row] - 0.42, positions[row] + 0.42, color="black", linewidth=1.0, zorder=5)
            ax.plot([positions[row]], [value], **PAPER_STYLE)
        ax.set_ylim(bottom=_nice_floor([*runs["value"], *paper["recall"]]))
        ax.set_xlabel("loss (paper's ablation row)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        handles, labels = ax.get_legend_handles_labels()
        labels = [weights_labels.get(label, label) for label in labels]
        if len(paper):
            handles.append(Line2D([], [], **PAPER_STYLE))
            labels.append("paper")
        _legend_outside(ax, handles, labels, title="weights")
        return _save(fig, stem)


def _band(ax: plt.Axes, x: np.ndarray, low: np.ndarray, high: np.ndarray, colour) -> None:
    ok = np.isfinite(low) & np.isfinite(high)
    if ok.any():
        ax.fill_between(x[ok], low[ok], high[ok], color=colour, alpha=0.18, linewidth=0)


def recall_curves(
    summary: pd.DataFrame, paper: pd.DataFrame, *, panels: Sequence[tuple[object, str]], panel_column: str,
    order: Sequence[str], palette: Palette, title: str, stem: Path,
) -> list[Path]:
    """Recall@K against K, one panel per ``panels`` entry (value of ``panel_column``, panel title).

    ``summary``: ``row, k, mean, ci_low, ci_high`` and ``panel_column``; ours solid with a 95% CI band.
    ``paper``: ``row, k, recall`` and ``panel_column``; dashed with hollow markers, same colour (only
    the K of ``summary`` are on the axis).
    """
    ks = sorted({int(k) for k in summary["k"]})
    return _ours_vs_paper(
        summary, paper, x="k", ticks=ks, base=10 if max(ks) > 64 else 2, xlabel="K (log scale)",
        ylabel="Recall@K on the test set (%)", ours_label="ours (band: 95% CI)",
        paper_style={"linestyle": "--", "marker": "s", "markersize": 5, "markerfacecolor": "white"},
        panels=panels, panel_column=panel_column, order=order, palette=palette, title=title, note="", stem=stem,
    )  # fmt: skip


def embedding_size_curves(
    summary: pd.DataFrame, paper: pd.DataFrame, *, panels: Sequence[tuple[object, str]], panel_column: str,
    order: Sequence[str], palette: Palette, title: str, note: str, stem: Path,
) -> list[Path]:
    """Recall@1 against embedding size: ours with 95% CI error bars, the paper's points as hollow diamonds.

    ``summary``: ``row, embedding_size, mean, ci_low, ci_high`` and ``panel_column``; ``paper``:
    ``row, embedding_size, recall`` (the same points in every panel). ``note`` goes under the figure.
    """
    sizes = sorted({int(s) for s in summary["embedding_size"]} | {int(s) for s in paper["embedding_size"]})
    return _ours_vs_paper(
        summary, paper, x="embedding_size", ticks=sizes, base=2, xlabel="embedding size (dimensions, log scale)",
        ylabel="Recall@1 on the test set (%)", ours_label="ours (95% CI)",
        paper_style={"linestyle": "none", "marker": "D", "markersize": 8, "markerfacecolor": "white",
                     "markeredgewidth": 1.6},
        panels=panels, panel_column=panel_column, order=order, palette=palette, title=title, note=note, stem=stem,
    )  # fmt: skip


def _ours_vs_paper(
    summary: pd.DataFrame, paper: pd.DataFrame, *, x: str, ticks: Sequence[int], base: int, xlabel: str,
    ylabel: str, ours_label: str, paper_style: dict, panels: Sequence[tuple[object, str]], panel_column: str,
    order: Sequence[str], palette: Palette, title: str, note: str, stem: Path,
) -> list[Path]:
    """Panels of ours (mean, with a CI band for a K axis or CI error bars for sizes) against the paper."""
    with _style():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.2, 4.3), squeeze=False, sharey=True)
        for ax, (panel, panel_title) in zip(axes[0], panels, strict=True):
            ours = summary[summary[panel_column] == panel]
            theirs = paper[paper[panel_column] == panel] if panel_column in paper else paper
            for row in order:
                mine = ours[ours["row"] == row].sort_values(x)
                xs, mean = mine[x].to_numpy(float), mine["mean"].to_numpy(float)
                low, high = mine["ci_low"].to_numpy(float), mine["ci_high"].to_numpy(float)
                if x == "k":
                    ax.plot(xs, mean, marker="o", markersize=4, color=palette[row])
                    _band(ax, xs, low, high, palette[row])
                elif len(mine):
                    err = np.nan_to_num(np.vstack([mean - low, high - mean]))
                    ax.errorbar(xs, mean, yerr=err, marker="o", markersize=4, capsize=3, color=palette[row])
                ref = theirs[theirs["row"] == row].sort_values(x)
                ax.plot(ref[x], ref["recall"], color=palette[row], **paper_style)
            _log_ticks(ax, ticks, base=base)
            ax.set_xlabel(xlabel)
            ax.set_title(panel_title)
        axes[0][0].set_ylabel(ylabel)
        shown = [r for r in order if (summary["row"] == r).any() or (paper["row"] == r).any()]
        handles = [Line2D([], [], color=palette[r], linewidth=2) for r in shown]
        handles.append(Line2D([], [], color="black", marker="o", markersize=4))
        labels = [*shown, ours_label]
        if len(paper):
            handles.append(Line2D([], [], color="black", **paper_style))
            labels.append("paper")
        _legend_outside(axes[0][-1], handles, labels)
        fig.suptitle(title)
        if note:
            fig.text(0.01, -0.02, note, ha="left", va="top", fontsize="small", wrap=True)
        return _save(fig, stem)


def _binned(log: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean of ``column`` per (row, seed, iteration), iterations averaged in bins when there are more
    than :data:`_MAX_BINS` of them (x = the bin's centre)."""
    data = log.dropna(subset=[column])
    if data.empty:
        return data
    width = math.ceil(float(data["iteration"].max()) / _MAX_BINS)
    if width > 1:
        data = data.assign(iteration=(np.floor((data["iteration"] - 1) / width) + 0.5) * width)
    out = data.groupby(["row", "seed", "iteration"], as_index=False)[column].mean()
    return out.rename(columns={column: "y"})


def training_curves(
    train_log: pd.DataFrame, evals: pd.DataFrame, *, order: Sequence[str], palette: Palette, eval_label: str,
    title: str, stem: Path,
) -> list[Path]:
    """Four panels over iterations: training loss, R@1 during training, mined positive and negative pairs.

    ``train_log``: ``row, seed, iteration, loss, pos_pairs, neg_pairs``; ``evals``: ``row, seed,
    iteration, value`` (R@1 in percent on the split named by ``eval_label``). Lines: mean over seeds,
    band: +-1 standard deviation over seeds. Loss and pair counts go to a log axis when they span more
    than a factor of 20 (losses of different scales on one panel).
    """
    panels = [
        (train_log, "loss", "training loss", True),
        (evals.rename(columns={"value": "r1"}), "r1", f"Recall@1 on {eval_label} (%)", False),
        (train_log, "pos_pairs", "mined positive pairs per batch", True),
        (train_log, "neg_pairs", "mined negative pairs per batch", True),
    ]
    with _style():
        fig, axes = plt.subplots(2, 2, figsize=(12.0, 7.5))
        for ax, (data, column, ylabel, log_y) in zip(axes.flat, panels, strict=True):
            binned = _binned(data, column) if column in data else pd.DataFrame()
            if binned.empty:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            else:
                present = [r for r in order if (binned["row"] == r).any()]
                sns.lineplot(binned, x="iteration", y="y", hue="row", hue_order=present, palette=palette,
                             errorbar="sd", legend=False, ax=ax)  # fmt: skip
                if log_y and (binned["y"] > 0).all() and binned["y"].max() > 20 * binned["y"].min():
                    ax.set_yscale("log")  # losses (or pair counts) of very different sizes
                    ylabel += " (log scale)"
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
        present = [r for r in order if (train_log["row"] == r).any() or (evals["row"] == r).any()]
        handles = [Line2D([], [], color=palette[r], linewidth=2) for r in present]
        _legend_outside(axes[0][1], handles, present, title="loss (band: ±1 SD over seeds)")
        fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, stem)


def pair_weight_distributions(
    weights: pd.DataFrame, *, order: Sequence[str], title: str, stem: Path, seed: int = 0
) -> list[Path]:
    """Split violins of the pair weights |dL/dS| per loss: positive pairs left, negative pairs right.

    ``weights``: ``row, kind ("positive"|"negative"), weight`` (non-positive weights are dropped:
    log scale). Each tick label says how many pairs of each kind there were; at most
    :data:`_MAX_WEIGHTS` per (loss, kind) are drawn, a fixed-seed random subset.
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
    with _style():
        fig, ax = plt.subplots(figsize=(max(6.0, 1.25 * len(present) + 2.5), 4.8))
        sns.violinplot(drawn, x="row", y="weight", hue="kind", order=present, hue_order=["positive", "negative"],
                       split=True, log_scale=True, inner="quart", density_norm="width", cut=0, linewidth=0.8,
                       palette={"positive": "#4C72B0", "negative": "#DD8452"}, ax=ax)  # fmt: skip
        ax.set_xticks(range(len(present)))
        ax.set_xticklabels(
            [f"{r}\n+{counts.get((r, 'positive'), 0)} / −{counts.get((r, 'negative'), 0)}" for r in present]
        )
        ax.set_xlabel("loss (pairs with non-zero weight: + positive / − negative)")
        ax.set_ylabel("pair weight |∂L/∂S| (log scale)")
        ax.set_title(title)
        _legend_outside(ax, title="pair")
        return _save(fig, stem)
