"""The test-set re-runs of a fair run: default.yaml (the grid as written) and tuned.yaml
(each loss at its best)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness.config import validate_experiment
from harness.fair.schema import FairSetup
from harness.fair.select import Selection
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


def tuned_experiment(setup: FairSetup, selections: list[Selection]) -> dict[str, Any]:
    """The grid with each loss at its selected values (a loss whose study completed no trial, or whose
    defaults won, keeps its own)."""
    doc = _resolved(setup, TUNED)
    doc["description"] = (
        f"fair run {setup.name}: every loss at the best values of its study "
        f"({setup.fair.trials} trials, val {setup.studies[0].setup.metric}), on the test set"
    )
    for selection in selections:
        entry = doc["grid"]["losses"][selection.study.index]
        entry["hparams"] = {**entry.get("hparams", {}), **selection.params}
    return doc


def write_experiment(doc: dict[str, Any], path: Path, header: str) -> Path:
    """Validate ``doc`` as an experiment and write it to ``path`` with a comment header."""
    validate_experiment(json.loads(json.dumps(doc)), str(path))
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + yaml.safe_dump(doc, sort_keys=False))
    return path


def rerun(path: Path, results: Path, *, jobs: int | None, quiet: bool, launcher: str = "local") -> int:
    """Run the experiment file ``path`` into ``results`` with the runner (:func:`harness.run.run_experiment`),
    finished cells skipped, on this machine or (``launcher="slurm"``) as Slurm jobs; the exit code."""
    from harness.config import expand_cells, load_experiment
    from harness.run import run_experiment

    experiment = load_experiment(path)
    on_slurm = None
    if launcher == "slurm":
        from harness.cluster.launcher import SlurmLauncher

        on_slurm = SlurmLauncher.for_experiment(experiment, len(expand_cells(experiment)), progress=not quiet)
    return run_experiment(experiment, results, jobs=jobs, progress=not quiet, launcher=on_slurm)
