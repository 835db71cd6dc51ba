"""``python -m harness.fair``: the command line, the worker processes and the parent's run of the whole protocol."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from harness.fair.report import write_fair_report
from harness.fair.reruns import (
    DEFAULT,
    TUNED,
    default_experiment,
    run_experiment,
    tuned_experiment,
    write_experiment,
)
from harness.fair.schema import FairSetup, load_fair
from harness.fair.studies import (
    STORAGE_ENV,
    all_full,
    default_storage,
    fill_studies,
    prepare_studies,
    spawn_workers,
    study_dir,
    study_state,
)
from harness.files import atomic_write_text
from harness.plugins import load_plugins
from harness.tune.interrupt import Interrupted, StopSignals
from harness.tune.outputs import optuna_verbosity, write_outputs
from harness.tune.storage import open_storage, shown_url
from harness.tune.workers import add_worker_arguments, storage_for, work_share

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.fair",
        description="The fair protocol: every loss tuned with the same budget, then default and tuned on the test set.",
    )
    parser.add_argument("file", help="fair file: an experiment YAML with a fair: section")
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage shared by every study: an SQLAlchemy URL or journal:FILE "
        "(default: sqlite:///<results>/<name>/studies.db)",
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="processes filling the studies")
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
    add_worker_arguments(parser, set_example="fair.trials=4")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.fair``; Ctrl-C or SIGTERM stops it cleanly (exit 128 + signal)."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected a positive number of processes")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected a positive number of cells at once")
    load_plugins(args.imports)
    setup = load_fair(args.file, args.sets)
    fair_dir = setup.folder(args.results)
    fair_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage_for(args.storage, args.worker, STORAGE_ENV, default_storage(fair_dir))
    storage = open_storage(storage_url, setup.fair.heartbeat)
    with optuna_verbosity(logging.WARNING if args.quiet else logging.INFO):
        if args.worker is not None:
            with StopSignals().installed() as signals:
                return work_share(
                    signals,
                    lambda: fill_studies(
                        setup, storage, fair_dir, worker=args.worker, progress=not args.quiet, signals=signals
                    ),
                )
        return _run(args, setup, storage, storage_url, fair_dir)


def _log(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _run_studies(
    args: argparse.Namespace,
    setup: FairSetup,
    storage: Any,
    storage_url: str,
    fair_dir: Path,
    signals: StopSignals,
) -> int:
    """Fill every study to the budget (in this process or ``--workers`` processes); write their outputs
    (also when stopped: then it returns ``128 + signal``)."""
    from harness.builders import load_splits
    from harness.tune.trials import trial_cell

    started = time.perf_counter()
    first = setup.studies[0].setup
    # a missing dataset, or class folds leaving too few classes, stops here with one line
    load_splits(trial_cell(first.template, {}, first.seeds[0], first.name, folds=setup.fair.folds))
    retried = prepare_studies(setup, storage)
    resolved = {**setup.experiment.model_dump(mode="json"), "fair": setup.fair.model_dump(mode="json")}
    atomic_write_text(fair_dir / "fair.yaml", yaml.safe_dump(resolved, sort_keys=False))
    _log(
        args,
        f"{setup.name}: {len(setup.studies)} studies of {setup.fair.trials} trials on "
        f"{shown_url(storage_url)}, {args.workers} worker(s)",
    )
    if retried:
        _log(args, f"retrying interrupted trial(s) {', '.join(retried)} in their folders")
    codes, stop = [0], None
    try:
        if all_full(setup, storage):
            _log(args, "every study already holds its trials; raise fair.trials to run more")
        elif args.workers == 1:
            fill_studies(setup, storage, fair_dir, worker=0, progress=not args.quiet, signals=signals)
        else:
            codes = spawn_workers(
                args.file,
                args.sets,
                args.results,
                storage_url,
                args.workers,
                quiet=args.quiet,
                signals=signals,
            )
    except Interrupted as err:
        stop = err
    import optuna

    seconds = time.perf_counter() - started
    for study in setup.studies:
        loaded = optuna.load_study(study_name=study.name, storage=storage)
        write_outputs(
            study.setup, loaded, study_dir(fair_dir, study), storage_url=storage_url, seconds=seconds
        )
    if stop is not None:
        print(
            f"interrupted by {stop.name}: running trials recorded as failed; the next run retries them and "
            "goes on",
            file=sys.stderr,
        )
        return stop.exit_code
    bad = [code for code in codes if code != 0]
    return 0 if not bad else (2 if 2 in bad else EXIT_FAILED)


def _run(args: argparse.Namespace, setup: FairSetup, storage: Any, storage_url: str, fair_dir: Path) -> int:
    """The parent: studies (stop signals handled as harness.tune does), then the default and tuned re-runs on
    the test set (an interrupted cell resumes from its checkpoint), then the report."""
    with StopSignals().installed() as signals:
        code = _run_studies(args, setup, storage, storage_url, fair_dir, signals)
    states = [study_state(study, storage) for study in setup.studies]
    for state in states:
        c = state.counts
        _log(
            args,
            f"  {state.study.key}: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
            f"{c.get('fail', 0)} failed of {setup.fair.trials}",
        )
    if code != 0 or args.studies_only:
        return code
    unsettled = [s.study.key for s in states if not s.settled]
    if unsettled:
        print(
            f"studies {', '.join(unsettled)} still have trials running elsewhere; run this command again when "
            "they finish for the re-runs and the report",
            file=sys.stderr,
        )
        return 0
    defaults = Path(args.defaults) if args.defaults else fair_dir / DEFAULT
    default_file = write_experiment(
        default_experiment(setup, defaults.name),
        fair_dir / "default.yaml",
        f"Written by harness.fair: {setup.name} at default hyperparameters.",
    )
    tuned_file = write_experiment(
        tuned_experiment(setup, states),
        fair_dir / "tuned.yaml",
        f"Written by harness.fair: {setup.name} at each study's best values.",
    )
    codes = [
        run_experiment(default_file, defaults.parent, jobs=args.jobs, quiet=args.quiet),
        run_experiment(tuned_file, fair_dir, jobs=args.jobs, quiet=args.quiet),
    ]
    report = write_fair_report(setup, states, defaults, fair_dir / TUNED, fair_dir)
    print(f"fair report: {report}", file=sys.stderr)
    return EXIT_FAILED if any(codes) else 0
