"""Run ``python -m harness.fair``."""

from harness.errors import cli_main
from harness.fair.cli import main

cli_main(main)
