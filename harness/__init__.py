"""Benchmark-and-reproduction harness for pair-based deep metric learning losses.

Pipeline, one module (or sub-package) per stage:
data -> models -> losses (top-level package) -> train -> evaluate -> stats -> report.
"""

__version__ = "0.1.0"
