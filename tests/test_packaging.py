"""A built wheel holds what an installed harness reads: the paper's tables ship as package data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from harness.report.reading import PAPER_DIR, load_paper_tables

ROOT = Path(__file__).resolve().parent.parent
PAPER_FILES = [f"harness/paper/table{n}.csv" for n in (2, 3, 4, 5)] + ["harness/paper/README.md"]


def test_the_report_reads_the_paper_tables_from_the_package() -> None:
    assert PAPER_DIR == ROOT / "harness" / "paper"
    assert set(load_paper_tables(PAPER_DIR)["table"]) == {2, 3, 4, 5}


def test_a_wheel_ships_the_paper_tables(tmp_path: Path) -> None:
    """Built from a copy of the sources (no build folder in the checkout), offline, without isolation."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("harness", "losses"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "-q"]
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "-w", str(tmp_path / "wheels"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("gpw_harness-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert set(PAPER_FILES) <= names
        assert archive.read("harness/paper/table2.csv") == (ROOT / "harness/paper/table2.csv").read_bytes()
