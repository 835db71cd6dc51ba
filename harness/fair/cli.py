"""``python -m harness.fair``: the command line, what the fair studies add to the shared study steps, then the
test-set re-runs and the report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import EXIT_USER_ERROR, ArgumentParser, UserError
from harness.fair.report import write_fair_report
from harness.fair.reruns import DEFAULT, TUNED, default_experiment, rerun, tuned_experiment, write_experiment
from harness.fair.schema import FairSetup, load_fair
from harness.fair.select import select_all, selection_record
from harness.fair.studies import (
    STORAGE_ENV,
    all_full,
    default_storage,
    fill_studies,
    prepare_studies,
    study_dir,
    study_state,
)
from harness.files import atomic_write_text
from harness.plugins import load_plugins
from harness.records import CellStatus
from harness.results import cell_paths
from harness.run import is_reference_folder
from harness.stopping import Interrupted, StopSignals
from harness.studies.command import add_study_arguments, require_positive, run_study_command
from harness.studies.storage import open_storage
from harness.tune.outputs import optuna_verbosity, write_outputs

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = ArgumentParser(
        prog="python -m harness.fair",
        description="The fair protocol: every loss tuned with the same budget, "
        "then default and tuned on the test set.",
    )
    parser.add_argument("file", help="fair file: an experiment YAML with a fair: section")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the file and list the studies, the budget and the re-run cells; train nothing",
    )
    add_study_arguments(
        parser,
        storage_help="Optuna storage shared by every study: an SQLAlchemy URL or journal:FILE "
        "(default: sqlite:///<results>/<name>/studies.db)",
        workers_help="processes filling the studies",
        set_example="fair.trials=4",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="cells trained at once by the test re-runs (harness.run --jobs)",
    )
    parser.add_argument(
        "--studies-only",
        action="store_true",
        help="fill the studies and stop (another machine joining the storage)",
    )
    parser.add_argument(
        "--defaults",
        default=None,
        metavar="DIR",
        help="experiment folder holding (or to hold) the default-hyperparameter cells, e.g. a "
        "finished run of the same grid (default: <results>/<name>/default)",
    )
    return parser


class FairCommand:
    """The studies of a fair run: one per loss on one storage, each filled to ``fair.trials``."""

    module = "harness.fair"
    storage_env = STORAGE_ENV

    def __init__(self, setup: FairSetup, folder: Path) -> None:
        self.setup, self.folder = setup, folder

    def worker_options(self) -> list[str]:
        return []

    def check_data(self) -> None:
        """Class folds leaving too few classes stop here too."""
        from harness.builders import load_splits
        from harness.tune.trials import trial_cell

        first = self.setup.studies[0].setup
        load_splits(trial_cell(first.template, {}, first.seeds[0], first.name, folds=self.setup.fair.folds))

    def prepare(self, storage: BaseStorage) -> list[str]:
        return prepare_studies(self.setup, storage)

    def resolved(self) -> tuple[str, dict[str, Any]]:
        return "fair.yaml", {
            **self.setup.experiment.model_dump(mode="json"),
            "fair": self.setup.fair.model_dump(mode="json"),
        }

    def opening(self, shown_url: str, workers: int) -> str:
        return (
            f"{self.setup.name}: {len(self.setup.studies)} studies of {self.setup.fair.trials} trials on "
            f"{shown_url}, {workers} worker(s)"
        )

    def full(self, storage: BaseStorage) -> str | None:
        if not all_full(self.setup, storage):
            return None
        return "every study already holds its trials; raise fair.trials to run more"

    def share(self, storage: BaseStorage, worker: int, progress: bool, signals: StopSignals) -> None:
        fill_studies(self.setup, storage, self.folder, worker=worker, progress=progress, signals=signals)

    def outputs(self, storage: BaseStorage, storage_url: str, stop: Interrupted | None) -> None:
        import optuna

        for study in self.setup.studies:
            loaded = optuna.load_study(study_name=study.name, storage=storage)
            folder = study_dir(self.folder, study)
            write_outputs(study.setup, loaded, folder, storage_url=storage_url)
        if stop is not None:
            print(
                f"interrupted by {stop.name}: running trials recorded as failed; the next run retries them "
                "and goes on",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.fair``; Ctrl-C or SIGTERM stops it cleanly (exit 128 + signal)."""
    args = build_parser().parse_args(argv)
    require_positive("--workers", args.workers, "a positive number of processes")
    require_positive("--jobs", args.jobs, "a positive number of cells at once")
    if args.jobs is not None and args.launcher == "slurm":
        raise UserError(f"--jobs {args.jobs} with --launcher slurm: each re-run cell is its own Slurm job")
    load_plugins(args.imports)
    setup = load_fair(args.file, args.sets)
    fair_dir = setup.folder(args.results)
    if args.check:
        return check(setup, fair_dir, args)
    fair_dir.mkdir(parents=True, exist_ok=True)
    command = FairCommand(setup, fair_dir)
    with optuna_verbosity(logging.WARNING if args.quiet else logging.INFO):
        code, storage = run_study_command(
            command,
            args,
            default_storage=default_storage(fair_dir),
            heartbeat=setup.fair.heartbeat,
            cluster=setup.experiment.cluster,
        )
        if args.worker is not None:
            return code
        return _rerun_and_report(args, setup, storage, fair_dir, code)


def _log(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _rerun_and_report(
    args: argparse.Namespace, setup: FairSetup, storage: BaseStorage, fair_dir: Path, studies_code: int
) -> int:
    """The parent after the studies: their counts, then the default and tuned re-runs on the test set (an
    interrupted cell resumes from its checkpoint), then the report."""
    states = [study_state(study, storage) for study in setup.studies]
    for state in states:
        c = state.counts
        _log(
            args,
            f"  {state.study.key}: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
            f"{c.get('fail', 0)} failed of {setup.fair.trials}",
        )
    if studies_code != 0 or args.studies_only:
        return studies_code
    unsettled = [s.study.key for s in states if not s.settled]
    if unsettled:
        print(
            f"studies {', '.join(unsettled)} still have trials running elsewhere; run this command "
            f"again when "
            "they finish for the re-runs and the report",
            file=sys.stderr,
        )
        return 0
    if setup.protocol_changes:
        _log(
            args,
            f"re-scoring the defaults and the best {setup.fair.rescore} trials of each study on the "
            "re-runs' protocol (validation)",
        )
    try:
        with StopSignals().installed() as signals:
            selections = select_all(
                setup, states, storage, fair_dir, progress=not args.quiet, signals=signals
            )
    except Interrupted as stop:
        print(f"interrupted by {stop.name} while re-scoring; the next run resumes it", file=sys.stderr)
        return stop.exit_code
    atomic_write_text(fair_dir / "selection.json", selection_record(selections) + "\n")
    defaults = Path(args.defaults) if args.defaults else fair_dir / DEFAULT
    default_doc = default_experiment(setup, defaults.name)
    default_file = write_experiment(
        default_doc,
        fair_dir / "default.yaml",
        f"Written by harness.fair: {setup.name} at default hyperparameters.",
    )
    tuned_file = write_experiment(
        tuned_experiment(setup, selections),
        fair_dir / "tuned.yaml",
        f"Written by harness.fair: {setup.name} at each loss's selected values.",
    )
    finished, total = finished_cells(default_file, defaults)
    if finished == total:
        _log(args, f"default arm: all {total} cells already finished in {defaults}; reused, none trained")
        codes = [0]
    else:
        if is_reference_folder(defaults):
            raise UserError(
                f"--defaults {defaults}: a committed reference run holds {finished} of the {total} "
                "default cells and is never written; give a folder the default cells may be trained in, or "
                "regenerate the reference first"
            )
        _log(args, f"default arm: {finished} of {total} cells already finished in {defaults}, reused")
        codes = [
            rerun(default_file, defaults.parent, jobs=args.jobs, quiet=args.quiet, launcher=args.launcher)
        ]
    codes.append(rerun(tuned_file, fair_dir, jobs=args.jobs, quiet=args.quiet, launcher=args.launcher))
    report = write_fair_report(setup, states, selections, defaults, fair_dir / TUNED, fair_dir)
    print(f"fair report: {report}", file=sys.stderr)
    return EXIT_FAILED if any(codes) else 0


def finished_cells(experiment_file: Path, exp_dir: Path) -> tuple[int, int]:
    """How many of the cells of ``experiment_file`` are finished in ``exp_dir``, and how many it has (cell ids
    hash the whole protocol, so only cells of an identical protocol count)."""
    from harness.config import expand_cells, load_experiment

    cells = expand_cells(load_experiment(experiment_file))
    done = sum(cell_paths(exp_dir, c.cell_id).status_value() == CellStatus.FINISHED for c in cells)
    return done, len(cells)


def check(setup: FairSetup, fair_dir: Path, args: argparse.Namespace) -> int:
    """``--check``: validate everything that needs no training and print the studies, the budget and the
    re-run cells; the exit code (2 when the preflight finds a problem)."""
    from harness.config import expand_cells, validate_experiment
    from harness.preflight import print_preflight

    experiment = setup.experiment
    cells = expand_cells(experiment)
    if not print_preflight(experiment, cells):
        return EXIT_USER_ERROR
    fair, first = setup.fair, setup.studies[0].setup
    stored = _stored_counts(setup, fair_dir, args.storage)
    print(
        f"ok: {setup.name}: {len(setup.studies)} studies x {fair.trials} trials = "
        f"{len(setup.studies) * fair.trials} trials, each up to {first.steps} iterations "
        f"({len(first.runs)} run(s): trial seeds {fair.seeds}"
        + (f" x {fair.folds} class folds" if fair.folds else "")
        + f"), pruner {fair.pruner.name}, TPE seed {fair.sampler.seed}"
        + ("; the first trial of each study trains the defaults" if fair.default_first else "")
    )
    if setup.protocol_changes:
        print(
            f"  trials: a shorter protocol than the re-runs ({'; '.join(setup.protocol_changes)}); the "
            f"defaults and the best {fair.rescore} trials of each study are re-scored on the re-runs'"
            " protocol"
        )
    else:
        print(f"  trials: the re-runs' protocol ({experiment.train.iterations} iterations)")
    for study in setup.studies:
        space = ", ".join(
            f"{name} [{r.low:g}, {r.high:g}]{' log' if r.log else ''}"
            for name, r in study.setup.study.space.items()
        )
        values = ", ".join(f"{k}={v:g}" for k, v in study.setup.default_params.items())
        held = f"; stored: {stored[study.key]} of {fair.trials}" if study.key in stored else ""
        print(f"  study {study.name} ({study.label}): {space}; defaults {values}{held}")
    default_dir = Path(args.defaults) if args.defaults else fair_dir / DEFAULT
    doc = default_experiment(setup, default_dir.name)
    ids = [c.cell_id for c in expand_cells(validate_experiment(doc, f"{setup.source} (default.yaml)"))]
    done = sum(cell_paths(default_dir, i).status_value() == CellStatus.FINISHED for i in ids)
    print(
        f"  re-runs: default arm {len(ids)} cells in {default_dir} ({done} already finished, reused),"
        " tuned arm "
        f"{len(cells)} cells in {fair_dir / TUNED} (seeds {list(experiment.grid.seeds)})"
    )
    return 0


def _stored_counts(setup: FairSetup, fair_dir: Path, storage_url: str | None) -> dict[str, int]:
    """The counted trials each study already holds (only when the default SQLite file exists, or with
    --storage); nothing is created."""
    import optuna

    from harness.tune.trials import counted_trials

    if storage_url is None and not (fair_dir / "studies.db").is_file():
        return {}
    storage = open_storage(storage_url or default_storage(fair_dir), setup.fair.heartbeat)
    out = {}
    for study in setup.studies:
        try:
            loaded = optuna.load_study(study_name=study.name, storage=storage)
        except KeyError:
            continue
        out[study.key] = len(counted_trials(loaded.get_trials(deepcopy=False)))
    return out
