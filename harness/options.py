"""The command-line options that ``harness.run``, ``harness.tune`` and ``harness.fair`` share."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable, into ``sets``): a field of the file overridden, as
    ``load_experiment`` takes it."""
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field, e.g. --set {example} (repeatable)",
    )
