"""Run ``python -m harness.tune``."""

from harness.errors import cli_main
from harness.tune.cli import main

cli_main(main)
