"""The test-set re-runs of a fair run: default.yaml (the grid as written) and tuned.yaml (each loss at its best)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness.config import validate_experiment
from harness.fair.schema import FairSetup
from harness.fair.studies import StudyState
from harness.files import atomic_write_text

DEFAULT, TUNED = "default", "tuned"


def _resolved(setup: FairSetup, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(setup.experiment.model_dump(mode="json")))
    doc["name"] = name
    return doc


def default_experiment(setup: FairSetup, name: str = DEFAULT) -> dict[str, Any]:
    """The grid with every loss at its default hyperparameters (the experiment as written), named ``name``."""
    doc = _resolved(setup, name)
    doc["description"] = f"fair run {setup.name}: every loss at its default hyperparameters, on the test set"
    return doc


def tuned_experiment(setup: FairSetup, states: list[StudyState]) -> dict[str, Any]:
    """The grid with each loss at its study's best values (a loss whose study completed no trial keeps its own)."""
    doc = _resolved(setup, TUNED)
    doc["description"] = (
        f"fair run {setup.name}: every loss at the best values of its study "
        f"({setup.fair.trials} trials, val {setup.studies[0].setup.metric}), on the test set"
    )
    for state in states:
        entry = doc["grid"]["losses"][state.study.index]
        entry["hparams"] = {**entry.get("hparams", {}), **state.best_params}
    return doc


def write_experiment(doc: dict[str, Any], path: Path, header: str) -> Path:
    """Validate ``doc`` as an experiment and write it to ``path`` with a comment header."""
    validate_experiment(json.loads(json.dumps(doc)), str(path))
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + yaml.safe_dump(doc, sort_keys=False))
    return path


def supports_jobs() -> bool:
    """Whether ``harness.run`` takes ``--jobs N`` (several cells at once)."""
    from harness.run import build_parser

    return not build_parser().parse_known_args(["x.yaml", "--jobs", "1"])[1]


def run_experiment(
    path: Path, results: Path, *, jobs: int | None, quiet: bool, launcher: str = "local"
) -> int:
    """``python -m harness.run PATH --results RESULTS --launcher LAUNCHER`` in this process; finished cells are skipped."""
    from harness.run import main as run_main

    argv = [str(path), "--results", str(results), *(["--launcher", launcher] if launcher != "local" else [])]
    if jobs is not None and supports_jobs():
        argv += ["--jobs", str(jobs)]
    return int(run_main(argv + (["--quiet"] if quiet else [])) or 0)
