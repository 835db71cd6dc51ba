"""`python -m harness.report DIR [--paper DIR]`."""

from harness.errors import cli_main
from harness.report import main

cli_main(main)
