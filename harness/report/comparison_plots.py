"""Drawing the report's two answer figures: the forest plot of paired differences and the critical-difference
diagram."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scikit_posthocs
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.report.plots import PAPER_STYLE, Styles, figure_style, save_figure

_T_COLOUR = "#1f77b4"
_BCA_COLOUR = "#ff7f0e"
_DETECTABLE_COLOUR = "#d9d9d9"


def forest(differences: pd.DataFrame, *, xlabel: str, title: str, stem: Path) -> list[Path]:
    """One line per comparison: the mean paired difference with its 95% t interval (thick) and BCa
    bootstrap interval (thin, just below), a grey band of +-D (the smallest difference the design
    detects with 80% power) behind it, and the decision at the right.

    ``differences``: columns ``label, diff, ci_low, ci_high, bca_low, bca_high, detectable, decision``,
    in drawing order (top to bottom).
    """
    n = len(differences)
    with figure_style():
        fig, ax = plt.subplots(figsize=(9.5, 0.55 * n + 1.6))
        ys = np.arange(n)[::-1].astype(float)
        for y, r in zip(ys, differences.itertuples(), strict=True):
            if math.isfinite(r.detectable):
                ax.fill_betweenx(
                    [y - 0.38, y + 0.38],
                    -r.detectable,
                    r.detectable,
                    color=_DETECTABLE_COLOUR,
                    linewidth=0,
                    zorder=1,
                )
            if not math.isnan(r.ci_low):
                ax.plot(
                    [r.ci_low, r.ci_high],
                    [y, y],
                    color=_T_COLOUR,
                    linewidth=3.2,
                    solid_capstyle="butt",
                    zorder=3,
                )
            if not math.isnan(r.bca_low):
                ax.plot(
                    [r.bca_low, r.bca_high], [y - 0.2, y - 0.2], color=_BCA_COLOUR, linewidth=1.6, zorder=3
                )
            ax.plot([r.diff], [y], marker="o", markersize=7, color="black", linestyle="none", zorder=4)
            ax.annotate(
                r.decision, xy=(1.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=8.5
            )
        ax.axvline(0.0, color="black", linewidth=1.0, zorder=2)
        ax.set_yticks(ys)
        ax.set_yticklabels(list(differences["label"]))
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_xlabel(xlabel)
        ax.set_title(title, loc="left")
        ax.grid(axis="y", visible=False)
        handles = [
            Line2D([], [], marker="o", color="black", linestyle="none", label="mean paired difference"),
            Line2D([], [], color=_T_COLOUR, linewidth=3.2, label="95% t interval"),
            Line2D([], [], color=_BCA_COLOUR, linewidth=1.6, label="95% BCa bootstrap interval"),
            Patch(color=_DETECTABLE_COLOUR, label="± D: smaller true differences\ngo undetected (80% power)"),
        ]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1 - 0.7 / (n + 2)),
            ncol=2,
            frameon=False,
            fontsize=8.5,
        )
        return save_figure(fig, stem)


def critical_difference(
    ranks: pd.Series,
    pvalues: pd.DataFrame,
    *,
    critical_difference: float,
    styles: Styles,
    title: str,
    stem: Path,
) -> list[Path]:
    """scikit-posthocs' critical-difference diagram: the average rank of each loss (1 = best) on one axis,
    losses joined by a bar when the post-hoc test does not separate them; a scale bar of length CD."""
    palette = {label: styles[label]["color"] for label in ranks.index if label in styles}
    with figure_style():
        fig, ax = plt.subplots(figsize=(9.0, 0.32 * len(ranks) + 1.9))
        drawn = scikit_posthocs.critical_difference_diagram(
            ranks,
            pvalues,
            ax=ax,
            color_palette=palette,
            label_fmt_left="{label} ({rank:.2f})",
            label_fmt_right="({rank:.2f}) {label}",
            marker_props={"s": 40, "zorder": 3},
            elbow_props={"linewidth": 1.2},
            crossbar_props={"linewidth": 3.0, "color": "black", "alpha": 0.7},
            label_props={"fontsize": 9},
        )
        # scikit-posthocs draws each crossbar through its losses in the order of a Python set (string hashes
        # vary between processes); in rank order, the same stored runs give the same file.
        for lines in drawn["crossbars"]:
            for line in lines:
                xs = sorted(line.get_xdata())
                line.set_data(xs, [line.get_ydata()[0]] * len(xs))
        ax.grid(False)  # grid lines would run through the labels
        if math.isfinite(critical_difference):  # a scale bar of length CD under the diagram, from rank 1
            ends = [1.0, 1.0 + critical_difference]
            ax.plot(
                ends,
                [-0.06, -0.06],
                color=PAPER_STYLE["color"],
                linewidth=2.0,
                marker="|",
                markersize=9,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
            ax.annotate(
                f"critical difference (Nemenyi, 5%) = {critical_difference:.2f} ranks",
                xy=(ends[1], -0.06),
                xycoords=ax.get_xaxis_transform(),
                xytext=(8, 0),
                textcoords="offset points",
                va="center",
                fontsize=8.5,
            )
        ax.set_title(title, loc="left", pad=26)
        return save_figure(fig, stem)
