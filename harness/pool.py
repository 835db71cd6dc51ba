"""The worker pool: N worker processes started together, waited for together and stopped together.

One pool serves ``harness.run --jobs N`` (cell workers, :mod:`harness.launch`) and the workers of
``harness.tune`` and ``harness.fair`` (:mod:`harness.studies.command`). A worker is a
:class:`WorkerCommand`: the arguments after ``python`` (``-m MODULE ...``) and the environment it adds.
A :class:`WorkerStarter` starts the commands and returns one :class:`Worker` handle each:
:class:`LocalWorkers` runs them as processes on this machine; a cluster starter submits the same
commands elsewhere and returns handles with the same four methods.

The stop scheme (:mod:`harness.stopping`): a stop signal to the parent is passed on to every running
worker (:func:`stop_workers`), which records its running cell or trial and exits; the parent waits up
to :data:`STOP_SECONDS` for them, then kills what is left. A worker whose parent is killed outright
stops by itself (:func:`harness.stopping.watch_parent`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.stopping import Interrupted, StopSignals

STOP_SECONDS = 30  # how long stopped workers get to leave before they are killed


@dataclass(frozen=True)
class WorkerCommand:
    """One worker: the arguments after ``python`` (``-m MODULE ...``), the environment variables it adds and,
    for a local worker only, the file descriptors it inherits (its end of a connection to the parent)."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    pass_fds: tuple[int, ...] = ()


class Worker(Protocol):
    """A started worker (:class:`subprocess.Popen` is one); ``wait`` raises ``subprocess.TimeoutExpired``."""

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class WorkerStarter(Protocol):
    """Starts the workers of one pool: :class:`LocalWorkers` on this machine, a cluster starter elsewhere."""

    def start(self, commands: Sequence[WorkerCommand]) -> list[Worker]: ...


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class LocalWorkers:
    """Starts each command as a process of this Python on this machine, importing this copy of the harness.

    Without ``OMP_NUM_THREADS`` set, the usable cores are split between the workers instead of each
    one taking them all.
    """

    def start(self, commands: Sequence[WorkerCommand]) -> list[Worker]:
        shared = dict(os.environ)
        source = str(Path(__file__).resolve().parent.parent)  # the folder holding this harness package
        shared["PYTHONPATH"] = os.pathsep.join(filter(None, [source, shared.get("PYTHONPATH")]))
        if "OMP_NUM_THREADS" not in shared and commands:
            shared["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // len(commands)))
        return [
            subprocess.Popen(
                [sys.executable, *command.args], env={**shared, **command.env}, pass_fds=command.pass_fds
            )
            for command in commands
        ]


def stop_workers(workers: Sequence[Worker], signum: int | None) -> None:
    """Pass ``signum`` on to every running worker (None: they are leaving anyway), wait up to
    :data:`STOP_SECONDS` for them all, then kill the rest."""
    for worker in workers:
        if signum is not None and worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signum)
    deadline = time.monotonic() + STOP_SECONDS
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def run_workers(starter: WorkerStarter, commands: Sequence[WorkerCommand], signals: StopSignals) -> list[int]:
    """Start one worker per command and wait for them all; returns their exit codes.

    A stop signal to the parent is passed on to the workers (:func:`stop_workers`), then raised again
    here as :class:`~harness.stopping.Interrupted`.
    """
    workers = starter.start(commands)
    try:
        with signals.armed():
            return [worker.wait() for worker in workers]
    except BaseException as err:
        stop_workers(workers, err.signum if isinstance(err, Interrupted) else signal.SIGTERM)
        raise
