"""``python -m harness.tune``: the command line and what one tune study adds to the shared study steps."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ArgumentParser
from harness.plugins import load_plugins
from harness.preflight import require_preflight
from harness.stopping import Interrupted, StopSignals
from harness.studies.command import (
    EXIT_FAILED_WORKER,
    add_study_arguments,
    require_positive,
    run_study_command,
)
from harness.tune.outputs import optuna_verbosity, write_outputs
from harness.tune.schema import TuneSetup, load_tune
from harness.tune.study import default_storage
from harness.tune.trials import interrupted_trials, prepare_study, run_worker, study_counts, study_is_full

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

# Optuna is imported inside functions: validating a tune file should not pay for it.

__all__ = ["EXIT_FAILED_WORKER", "STORAGE_ENV", "TuneCommand", "build_parser", "main"]

STORAGE_ENV = "HARNESS_TUNE_STORAGE"  # how a worker process learns its parent's storage URL


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = ArgumentParser(
        prog="python -m harness.tune", description="Optuna study over one cell's loss hyperparameters."
    )
    parser.add_argument("file", help="tune file: an experiment YAML with a study: section")
    add_study_arguments(
        parser,
        storage_help="Optuna storage: an SQLAlchemy URL (postgresql://..., sqlite:///...) or journal:FILE "
        "(default: sqlite:///<results>/<study>/study.db)",
        workers_help="processes sharing the study (default 1)",
        set_example="train.iterations=100",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="total trials the study should hold (default: study.trials of the file)",
    )
    return parser


class TuneCommand:
    """One study over one cell's loss hyperparameters, ``total`` trials in ``folder``."""

    module = "harness.tune"
    storage_env = STORAGE_ENV

    def __init__(self, setup: TuneSetup, folder: Path, total: int) -> None:
        self.setup, self.folder, self.total = setup, folder, total
        self.found = 0  # the counted trials the storage held when the run began

    def worker_options(self) -> list[str]:
        return ["--trials", str(self.total)]

    def check_data(self) -> None:
        from harness.builders import load_splits

        require_preflight(self.setup.experiment, [self.setup.template])  # --check's problems: before a trial
        load_splits(self.setup.template)

    def prepare(self, storage: BaseStorage) -> list[str]:
        self.found, retried = prepare_study(self.setup, storage, self.total)
        return [str(number) for number in retried]

    def resolved(self) -> tuple[str, dict[str, Any]]:
        return "tune.yaml", {
            **self.setup.experiment.model_dump(mode="json"),
            "study": self.setup.study.resolved(),
        }

    def opening(self, shown_url: str, workers: int) -> str:
        return (
            f"study {self.setup.name} on {shown_url}: {self.found} of {self.total} trials there; "
            f"{workers} worker(s)"
        )

    def full(self, storage: BaseStorage) -> str | None:
        import optuna

        if not study_is_full(optuna.load_study(study_name=self.setup.name, storage=storage), self.total):
            return None
        return f"study {self.setup.name} already holds {self.total} trials; raise --trials to run more"

    def share(self, storage: BaseStorage, worker: int, progress: bool, signals: StopSignals) -> None:
        run_worker(
            self.setup, storage, self.folder, self.total, worker=worker, progress=progress, signals=signals
        )

    def outputs(self, storage: BaseStorage, storage_url: str, stop: Interrupted | None) -> None:
        import optuna

        study = optuna.load_study(study_name=self.setup.name, storage=storage)
        written = write_outputs(self.setup, study, self.folder, storage_url=storage_url)
        counts = study_counts(study)
        line = (
            f"{self.setup.name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
            f"{counts.get('fail', 0)} failed of {self.total}; summary: {written['summary']}"
            + (f"; best: {written['best']}" if written["best"] else "")
        )
        if stop is not None:
            waiting = len(interrupted_trials(study.get_trials(deepcopy=False)))
            line = (
                f"interrupted by {stop.name}: {waiting} running trial(s) recorded as failed, the next run "
                f"retries them; {line}"
            )
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.tune``."""
    args = build_parser().parse_args(argv)
    require_positive("--workers", args.workers, "a positive number of processes")
    require_positive("--trials", args.trials, "the total number of trials, at least 1")
    load_plugins(args.imports)
    setup = load_tune(args.file, args.sets)
    folder = Path(args.results) / setup.name
    folder.mkdir(parents=True, exist_ok=True)
    command = TuneCommand(setup, folder, args.trials or setup.study.trials)
    with optuna_verbosity(logging.WARNING if args.quiet else logging.INFO):
        code, _ = run_study_command(
            command,
            args,
            default_storage=default_storage(folder),
            heartbeat=setup.study.heartbeat,
            cluster=setup.experiment.cluster,
        )
    return code
