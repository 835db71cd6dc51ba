"""Drawing the report's example figures: a grid of retrieved test images per loss, and t-SNE maps of the
embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from harness.report.plots import figure_style, legend_outside, save_figure

CORRECT_COLOUR = "#1a9850"
"""Frame of a retrieved image of the query's class."""
WRONG_COLOUR = "#d73027"
"""Frame of a retrieved image of another class."""
QUERY_COLOUR = "black"
"""Frame of a query image."""
_IMAGE_INCHES = 1.05
_MAP_COLUMNS = 4


@dataclass(frozen=True)
class Shown:
    """One image of the grid: its pixels (HxW grey or HxWx3 RGB in [0, 1]), class label and dataset index."""

    image: np.ndarray
    label: int
    index: int


def _framed(ax: plt.Axes, shown: Shown, colour: str, width: float) -> None:
    """The image without ticks, in a frame of ``colour``."""
    ax.imshow(shown.image, cmap="gray" if shown.image.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
        spine.set_visible(True)


def retrieval_grid(
    queries: Sequence[Shown], neighbours: Mapping[str, Sequence[Sequence[Shown]]], *, title: str, stem: Path
) -> list[Path]:
    """Per loss a block of rows, one row per query: the query (black frame), then its nearest test images,
    best first, framed green (and marked ✓) when of the query's class, red (✗) when not.

    ``neighbours`` maps each loss, in drawing order, to one list of retrieved images per query (the same
    queries for every loss, so that the blocks compare). Each image axes has a gid
    ``"<loss>|query <q>|<query or neighbour> <dataset index>"``, which names what it shows in the SVG.
    """
    k = max((len(found) for per_query in neighbours.values() for found in per_query), default=0)
    rows = list(neighbours)
    with figure_style():
        block_height = _IMAGE_INCHES * len(queries) + 0.5
        fig = plt.figure(figsize=(_IMAGE_INCHES * (k + 1) + 0.4, block_height * len(rows) + 0.5))
        blocks = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
        for block, row in zip(blocks, rows, strict=True):
            block.suptitle(row, x=0.02, ha="left", fontweight="bold")
            axes = block.subplots(len(queries), k + 1, squeeze=False, gridspec_kw={"wspace": 0.12})
            for q, (query, found) in enumerate(zip(queries, neighbours[row], strict=True)):
                _framed(axes[q, 0], query, QUERY_COLOUR, 2.5)
                axes[q, 0].set_gid(f"{row}|query {q}|query {query.index}")
                for rank, shown in enumerate(found, start=1):
                    ax = axes[q, rank]
                    correct = shown.label == query.label
                    _framed(ax, shown, CORRECT_COLOUR if correct else WRONG_COLOUR, 4.0)
                    ax.set_gid(f"{row}|query {q}|neighbour {shown.index}")
                    ax.set_xlabel(
                        "✓" if correct else "✗",
                        color=CORRECT_COLOUR if correct else WRONG_COLOUR,
                        labelpad=1,
                        fontsize="small",
                    )
                for rank in range(len(found) + 1, k + 1):
                    axes[q, rank].set_axis_off()
            axes[0, 0].set_title("query", fontsize="small")
            for rank in range(1, k + 1):
                axes[0, rank].set_title(f"{rank}", fontsize="small")
        fig.suptitle(title, y=1.0 + 0.25 / fig.get_figheight())
        return save_figure(fig, stem)


def embedding_maps(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    classes: Sequence[int],
    class_names: Mapping[int, str],
    title: str,
    stem: Path,
) -> list[Path]:
    """One 2-D map per loss (in the order of ``points``): each test image a dot, coloured by its class.

    ``points`` maps a loss to ``(xy, labels)`` (n x 2 map coordinates, n class labels), all drawn from the
    same ``classes``, which keep one colour and legend entry (``class_names``) in every panel. A map has
    no units, so the axes have no ticks.
    """
    rows = list(points)
    columns = min(_MAP_COLUMNS, len(rows))
    lines = -(-len(rows) // columns)
    palette = sns.color_palette("tab10" if len(classes) <= 10 else "husl", len(classes))
    with figure_style():
        fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns + 1.8, 3.5 * lines), squeeze=False)
        for ax, row in zip(axes.flat, rows, strict=False):
            xy, labels = points[row]
            for colour, label in zip(palette, classes, strict=True):
                mine = labels == label
                ax.scatter(
                    xy[mine, 0],
                    xy[mine, 1],
                    s=14,
                    color=colour,
                    alpha=0.85,
                    linewidths=0,
                    label=class_names[label],
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(row)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
        for ax in list(axes.flat)[len(rows) :]:
            fig.delaxes(ax)
        legend_outside(axes[0][columns - 1], title="test class", markerscale=1.5)
        fig.suptitle(title)
        fig.tight_layout()
        return save_figure(fig, stem)
