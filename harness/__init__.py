"""Benchmark-and-reproduction harness for pair-based deep metric learning losses.

Pipeline, one module (or sub-package) per stage:
data -> models -> losses (top-level package) -> train -> evaluate -> stats -> report.
``harness.load_cell(cell_dir)`` reads a finished cell back (:mod:`harness.analysis`); it is imported on
first use, so ``import harness`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LoadedCell", "load_cell"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from harness import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
