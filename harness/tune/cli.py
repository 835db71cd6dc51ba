"""``python -m harness.tune``: the command line, the worker processes and the parent's run of a study."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from harness.files import atomic_write_text
from harness.plugins import load_plugins
from harness.tune.interrupt import Interrupted, StopSignals
from harness.tune.outputs import optuna_verbosity, write_outputs
from harness.tune.schema import TuneSetup, load_tune
from harness.tune.storage import default_storage, open_storage, open_study, shown_url
from harness.tune.trials import interrupted_trials, retry_interrupted, run_worker, study_counts, study_is_full
from harness.tune.workers import add_worker_arguments, run_workers, storage_for, work_share, worker_commands

# Optuna is imported inside functions: validating a tune file should not pay for it.

EXIT_FAILED_WORKER = 1
STORAGE_ENV = "HARNESS_TUNE_STORAGE"  # how a worker process learns its parent's storage URL


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.tune", description="Optuna study over one cell's loss hyperparameters."
    )
    parser.add_argument("file", help="tune file: an experiment YAML with a study: section")
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage: an SQLAlchemy URL (postgresql://..., sqlite:///...) or journal:FILE "
        "(default: sqlite:///<results>/<study>/study.db)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes sharing the study (default 1)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="total trials the study should hold (default: study.trials of the file)",
    )
    add_worker_arguments(parser, set_example="train.iterations=100")
    return parser


def _spawn_workers(args: argparse.Namespace, storage_url: str, total: int, signals: StopSignals) -> list[int]:
    """Run ``args.workers`` worker processes on the storage and wait; returns their exit codes."""
    options = ["--trials", str(total), "--results", args.results]
    commands = worker_commands("harness.tune", args.file, args.workers, options, args.sets, args.quiet)
    return run_workers(commands, STORAGE_ENV, storage_url, signals)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.tune``."""
    args = build_parser().parse_args(argv)
    with StopSignals().installed() as signals:
        return _main(args, signals)


def _main(args: argparse.Namespace, signals: StopSignals) -> int:
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected a positive number of processes")
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: expected the total number of trials, at least 1")
    load_plugins(args.imports)
    setup = load_tune(args.file, args.sets)
    total = args.trials or setup.study.trials
    study_dir = Path(args.results) / setup.name
    study_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage_for(args.storage, args.worker, STORAGE_ENV, default_storage(study_dir))
    storage = open_storage(storage_url, setup.study.heartbeat)
    with optuna_verbosity(logging.WARNING if args.quiet else logging.INFO):
        if args.worker is not None:
            return work_share(
                signals,
                lambda: run_worker(
                    setup,
                    storage,
                    study_dir,
                    total,
                    worker=args.worker,
                    progress=not args.quiet,
                    signals=signals,
                ),
            )
        return _run_study(args, setup, storage, storage_url, study_dir, total, signals)


def _run_study(
    args: argparse.Namespace,
    setup: TuneSetup,
    storage: Any,
    storage_url: str,
    study_dir: Path,
    total: int,
    signals: StopSignals,
) -> int:
    """The parent: check the data, prepare the study, run the workers, write the outputs (also when stopped)."""
    import optuna

    from harness.builders import load_splits

    started = time.perf_counter()
    load_splits(setup.template)  # a missing dataset stops here with one line, before any trial
    study = open_study(setup, storage, setup.study.sampler.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    resolved = {**setup.experiment.model_dump(mode="json"), "study": setup.study.resolved()}
    atomic_write_text(study_dir / "tune.yaml", yaml.safe_dump(resolved, sort_keys=False))
    counts = study_counts(study)
    log = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    log(
        f"study {setup.name} on {shown_url(storage_url)}: {counts['total']} of {total} trials there; "
        f"{args.workers} worker(s)"
    )
    retried = retry_interrupted(study, total)
    if retried:
        log(f"retrying interrupted trial(s) {', '.join(map(str, retried))} in their folders")
    codes, stop = [0], None
    try:
        if study_is_full(study, total):
            log(f"study {setup.name} already holds {total} trials; raise --trials to run more")
        elif args.workers == 1:
            run_worker(setup, storage, study_dir, total, worker=0, progress=not args.quiet, signals=signals)
        else:
            codes = _spawn_workers(args, storage_url, total, signals)
    except Interrupted as err:
        stop = err
    study = optuna.load_study(study_name=setup.name, storage=storage)
    outputs = write_outputs(
        setup, study, study_dir, storage_url=storage_url, seconds=time.perf_counter() - started
    )
    counts = study_counts(study)
    line = (
        f"{setup.name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('fail', 0)} failed of {total}; summary: {outputs['summary']}"
        + (f"; best: {outputs['best']}" if outputs["best"] else "")
    )
    if stop is not None:
        waiting = len(interrupted_trials(study.get_trials(deepcopy=False)))
        print(
            f"interrupted by {stop.name}: {waiting} running trial(s) recorded as failed, the next run retries "
            f"them; {line}",
            file=sys.stderr,
        )
        return stop.exit_code
    print(line, file=sys.stderr)
    bad = [(k, c) for k, c in enumerate(codes) if c != 0]
    for worker, code in bad:
        print(f"worker {worker} exited with code {code}", file=sys.stderr)
    if not bad:
        return 0
    return 2 if any(code == 2 for _, code in bad) else EXIT_FAILED_WORKER
