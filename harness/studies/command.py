"""The steps of a study command, written once for ``harness.tune`` and ``harness.fair``.

Both commands run the same steps: the shared options, the storage (``--storage``, else the parent's URL
in a worker, else the default file), and then either a worker's share of the trials or the parent's
run: check the data, prepare the studies, record the resolved file, fill the studies (in this process
for one worker, else through a :class:`~harness.pool.WorkerStarter`), write the outputs (also when
stopped) and fold the result into one exit code. What differs is a :class:`StudyCommand`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from harness.cluster.jobs import add_launcher_argument, require_shared_storage
from harness.config import ClusterConfig
from harness.errors import EXIT_USER_ERROR, UserError
from harness.files import atomic_write_text
from harness.options import add_set_option
from harness.plugins import add_import_argument, import_arguments
from harness.pool import LocalWorkers, WorkerCommand, WorkerStarter, run_workers
from harness.stopping import Interrupted, StopSignals, watch_parent
from harness.studies.storage import Heartbeat, open_storage, shown_url

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

EXIT_FAILED_WORKER = 1


def add_study_arguments(
    parser: argparse.ArgumentParser, *, storage_help: str, workers_help: str, set_example: str
) -> None:
    """The options every study command takes: --storage, --workers, --set, --results, --quiet, --launcher,
    --import (and --worker K, hidden, which makes the process worker K of its parent: see
    :func:`worker_commands`)."""
    parser.add_argument("--storage", default=None, metavar="URL", help=storage_help)
    parser.add_argument("--workers", type=int, default=1, metavar="N", help=workers_help)
    add_set_option(parser, set_example)
    parser.add_argument("--results", default="results", help="results root folder (default: results)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_launcher_argument(parser, "the workers")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    add_import_argument(parser)


def require_positive(option: str, value: int | None, expected: str) -> None:
    """One line (``OPTION VALUE: expected ...``) for an option that must be at least 1 (None: not given)."""
    if value is not None and value < 1:
        raise UserError(f"{option} {value}: expected {expected}")


def storage_for(given: str | None, worker: int | None, storage_env: str, default: str) -> str:
    """``--storage`` when given, else in a worker the parent's URL (from ``storage_env``), else
    ``default``."""
    from_parent = os.environ.get(storage_env) if worker is not None else None
    return given or from_parent or default


def worker_commands(
    module: str, args: argparse.Namespace, options: list[str], storage_env: str, storage_url: str
) -> list[WorkerCommand]:
    """One command per worker: ``-m module file *options --worker K``, the ``--set`` items, ``--quiet``,
    ``--import`` for each plugin this process loaded (a worker imports them before it reads the file).

    The storage URL travels in the environment (``storage_env``), so no password shows in ``ps``.
    """
    tail = [arg for item in args.sets for arg in ("--set", item)] + (["--quiet"] if args.quiet else [])
    tail += import_arguments()
    return [
        WorkerCommand(
            ["-m", module, args.file, *options, "--results", args.results, "--worker", str(k), *tail],
            {storage_env: storage_url},
        )
        for k in range(args.workers)
    ]


def work_share(signals: StopSignals, share: Callable[[], object]) -> int:
    """Run a worker's ``share`` with its parent watched; the exit code: 0, or ``128 + signal`` after a
    stop."""
    watch_parent(signals)  # a parent killed with SIGKILL cannot pass the signal on
    try:
        share()
    except Interrupted as stop:
        return stop.exit_code  # the parent reports the interruption
    return 0


def worker_exit_code(codes: Sequence[int]) -> int:
    """The parent's exit code from its workers': 0, 2 when one stopped on a user error, else 1."""
    bad = [code for code in codes if code != 0]
    if not bad:
        return 0
    return EXIT_USER_ERROR if EXIT_USER_ERROR in bad else EXIT_FAILED_WORKER


class StudyCommand(Protocol):
    """What one study command adds to the shared steps (harness.tune: one study; harness.fair: one per
    loss)."""

    module: str  # a worker runs ``python -m module``
    storage_env: str  # the environment variable that carries the parent's storage URL to a worker
    folder: Path  # where the resolved file and the studies' folders go

    def worker_options(self) -> list[str]:
        """The options a worker's command line repeats after the file (``--trials N``)."""
        ...

    def check_data(self) -> None:
        """Load what the first trial trains on: a missing dataset stops here with one line, before any
        trial."""
        ...

    def prepare(self, storage: BaseStorage) -> list[str]:
        """Create or check every study, fail its stale trials, queue its interrupted ones again; the names of
        the trials queued again."""
        ...

    def resolved(self) -> tuple[str, dict[str, Any]]:
        """The resolved file's name in :attr:`folder` and its content."""
        ...

    def opening(self, shown_url: str, workers: int) -> str:
        """The first progress line."""
        ...

    def full(self, storage: BaseStorage) -> str | None:
        """A note when every study already holds its trials (nothing to run), else None."""
        ...

    def share(self, storage: BaseStorage, worker: int, progress: bool, signals: StopSignals) -> None:
        """Worker ``worker``'s share of the trials; raises Interrupted after a stop signal."""
        ...

    def outputs(self, storage: BaseStorage, storage_url: str, stop: Interrupted | None) -> None:
        """Write every study's outputs and print the closing lines (``stop``: what interrupted the run)."""
        ...


def run_study_command(
    command: StudyCommand,
    args: argparse.Namespace,
    *,
    default_storage: str,
    heartbeat: Heartbeat,
    starter: WorkerStarter | None = None,
    cluster: ClusterConfig | None = None,
) -> tuple[int, BaseStorage]:
    """The shared steps: the storage, then a worker's share (``--worker K``) or the parent's run (check the
    data, prepare the studies, fill them, write the outputs, also when stopped); returns (the exit code,
    ``128 + signal`` when stopped; the storage). With ``--launcher slurm`` the workers are Slurm jobs with
    ``cluster``'s resources, on a storage every node reaches."""
    storage_url = storage_for(args.storage, args.worker, command.storage_env, default_storage)
    if args.launcher == "slurm" and args.worker is None:
        require_shared_storage(storage_url, shown_url(storage_url))
        from harness.cluster.workers import SlurmWorkers

        cluster = cluster or ClusterConfig()
        starter = SlurmWorkers(cluster, command.folder / "slurm", cluster.job_name or command.folder.name)
    storage = open_storage(storage_url, heartbeat)
    with StopSignals().installed() as signals:
        if args.worker is not None:
            share = functools.partial(command.share, storage, args.worker, not args.quiet, signals)
            return work_share(signals, share), storage
        return _run_parent(command, args, storage, storage_url, signals, starter or LocalWorkers()), storage


def _run_parent(
    command: StudyCommand,
    args: argparse.Namespace,
    storage: BaseStorage,
    storage_url: str,
    signals: StopSignals,
    starter: WorkerStarter,
) -> int:
    """The parent's run of :func:`run_study_command`; the exit code."""
    command.check_data()
    retried = command.prepare(storage)
    name, resolved = command.resolved()
    atomic_write_text(command.folder / name, yaml.safe_dump(resolved, sort_keys=False))
    log = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    log(command.opening(shown_url(storage_url), args.workers))
    if retried:
        log(f"retrying interrupted trial(s) {', '.join(retried)} in their folders")
    codes: list[int] = []
    stop = None
    try:
        if (note := command.full(storage)) is not None:
            log(note)
        elif args.workers == 1 and args.launcher == "local":
            command.share(storage, 0, not args.quiet, signals)
        else:
            options = command.worker_options()
            workers = worker_commands(command.module, args, options, command.storage_env, storage_url)
            codes = run_workers(starter, workers, signals)
    except Interrupted as err:
        stop = err
    command.outputs(storage, storage_url, stop)
    if stop is not None:
        return stop.exit_code
    for worker, code in enumerate(codes):
        if code != 0:
            print(f"worker {worker} exited with code {code}", file=sys.stderr)
    return worker_exit_code(codes)
