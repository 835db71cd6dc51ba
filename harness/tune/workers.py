"""Worker processes of a study: started with the storage URL in their environment, stopped with their parent."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable

from harness.plugins import add_import_argument, import_arguments
from harness.tune.interrupt import Interrupted, StopSignals, watch_parent


def add_worker_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """The options a worker's command line carries (see :func:`worker_commands`): --set, --results, --quiet, --worker, --import."""
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field, e.g. --set {set_example} (repeatable)",
    )
    parser.add_argument("--results", default="results", help="results root folder (default: results)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    add_import_argument(parser)


def worker_commands(
    module: str, file: str, workers: int, options: list[str], sets: list[str], quiet: bool
) -> list[list[str]]:
    """One command line per worker: ``python -m module file *options --worker K``, the ``--set`` items, ``--quiet``."""
    tail = [arg for item in sets for arg in ("--set", item)] + (["--quiet"] if quiet else [])
    tail += import_arguments()  # the plugins this process loaded, imported by each worker before the file
    return [[sys.executable, "-m", module, file, *options, "--worker", str(k), *tail] for k in range(workers)]


def run_workers(
    commands: list[list[str]], storage_env: str, storage_url: str, signals: StopSignals
) -> list[int]:
    """Run one worker process per command, the storage URL in ``storage_env``, and wait; returns their exit codes.

    The URL travels in the environment (no password in ``ps``). A stop signal to the parent is passed on
    to the workers, which record their running trials as failed and exit; the parent waits for them, then
    raises :class:`Interrupted`.
    """
    env = {**os.environ, storage_env: storage_url}
    if "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(commands)))
    processes = [subprocess.Popen(command, env=env) for command in commands]
    try:
        with signals.armed():
            return [p.wait() for p in processes]
    except Interrupted as stop:
        for p in processes:
            if p.poll() is None:
                p.send_signal(stop.signum)
        for p in processes:
            p.wait()
        raise


def storage_for(given: str | None, worker: int | None, storage_env: str, default: str) -> str:
    """``--storage`` when given, else in a worker the parent's URL (from ``storage_env``), else ``default``."""
    from_parent = os.environ.get(storage_env) if worker is not None else None
    return given or from_parent or default


def work_share(signals: StopSignals, share: Callable[[], object]) -> int:
    """Run a worker's ``share`` with its parent watched; the exit code: 0, or ``128 + signal`` after a stop."""
    watch_parent(signals)  # a parent killed with SIGKILL cannot pass the signal on
    try:
        share()
    except Interrupted as stop:
        return stop.exit_code  # the parent reports the interruption
    return 0
