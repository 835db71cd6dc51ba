"""Checks on drawn matplotlib figures for the figure tests: record what is saved, compare legends with
artists."""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
from matplotlib.collections import Collection
from matplotlib.colors import to_rgba, to_rgba_array
from matplotlib.lines import Line2D
from matplotlib.patches import Patch


def record_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, matplotlib.figure.Figure]:
    """From now on every figure saved is kept, by file stem (e.g. ``recall_at_k_cars_d64``), and still
    written."""
    saved: dict[str, matplotlib.figure.Figure] = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self: matplotlib.figure.Figure, fname: object, *args: object, **kwargs: object) -> None:
        saved[Path(str(fname)).stem] = self
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return saved


def _colours(artist: object) -> set[tuple[float, ...]]:
    """Every colour an artist is drawn in (line colour, face and edge colours), as RGB tuples."""
    if isinstance(artist, Line2D):
        values = [artist.get_color(), artist.get_markeredgecolor()]
        face = artist.get_markerfacecolor()
        values += [] if str(face) == "none" else [face]
        return {tuple(np.round(to_rgba(v)[:3], 4)) for v in values}
    found: set[tuple[float, ...]] = set()
    for getter in ("get_facecolor", "get_edgecolor", "get_color"):
        if hasattr(artist, getter):
            value = getattr(artist, getter)()
            if value is not None and len(np.atleast_1d(value)):
                found |= {tuple(np.round(c[:3], 4)) for c in to_rgba_array(value) if c[3] > 0}
    return found


def _is_key(colours: set[tuple[float, ...]]) -> bool:
    """A black or grey legend key stands for a style drawn in every colour ("paper", "one seed")."""
    return bool(colours) and all(c[0] == c[1] == c[2] for c in colours)


def legend_mismatches(figure: matplotlib.figure.Figure) -> list[str]:
    """The legend entries of ``figure`` that match nothing drawn on its axes ([] when every one does).

    A line key matches a drawn line of the same marker and line style; a collection key (error bars,
    scatter dots) a drawn collection of the same kind; a patch key (a filled area) any drawn patch or
    collection. Colours must agree too,
    except for black or grey keys, which name a style drawn in the losses' colours."""
    lines = [line for ax in figure.axes for line in ax.get_lines()]
    shapes = [a for ax in figure.axes for a in (*ax.collections, *ax.patches)]
    problems = []
    for ax in figure.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
            colours = _colours(handle)
            if isinstance(handle, Line2D):
                candidates = [
                    line
                    for line in lines
                    if (line.get_marker(), line.get_linestyle())
                    == (handle.get_marker(), handle.get_linestyle())
                ]
            elif isinstance(handle, Patch):  # a filled area: drawn as a patch or a filled collection
                candidates = shapes
            elif isinstance(handle, Collection):
                candidates = [shape for shape in shapes if isinstance(shape, type(handle))]
            else:
                candidates = []
            if not any(_is_key(colours) or colours & _colours(c) for c in candidates):
                problems.append(text.get_text())
    return problems


def legend_labels(figure: matplotlib.figure.Figure) -> list[str]:
    """Every legend entry's text, over all axes of ``figure``."""
    return [t.get_text() for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
