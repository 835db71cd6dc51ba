"""Study workers as Slurm jobs: the cluster starter of :mod:`harness.pool` (``--launcher slurm``).

:class:`SlurmWorkers` starts a pool's worker commands (``-m harness.tune FILE ... --worker K``) as one
submitit job array; each array task runs its command in-process, as ``python -m`` would
(:class:`SlurmWorker`), and the handles it returns have the four methods of a local process, so
:func:`harness.pool.run_workers` waits for and stops Slurm workers as it does local ones. The storage
URL reaches the jobs through their environment (sbatch passes the submitting one on), never through a
file. Before its time limit (or on preemption) a worker stops as on SIGTERM (its running trial is
recorded interrupted, retried as without Slurm) and submitit requeues it to go on filling the study.
"""

from __future__ import annotations

import contextlib
import math
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit

from harness.cluster.jobs import job_states, make_executor, submit_array
from harness.config import ClusterConfig
from harness.pool import Worker, WorkerCommand

EXIT_LOST = 1  # the exit code of a worker whose job ended without a result (cancelled, killed)


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """``variables`` in os.environ for the block (what sbatch hands on to the jobs), then as they were."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class SlurmWorker(submitit.helpers.Checkpointable):
    """One array task: ``python ARGS`` (``-m MODULE ...``) in this process; requeued after its time limit."""

    def __call__(self, args: list[str]) -> int:
        usr_signal = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        submitit_handler = signal.getsignal(usr_signal)  # submitit's: checkpoint(), requeue, exit
        received: list[int] = []

        def stop_like_sigterm(signum: int, frame: object) -> None:
            received.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's own stop: its trial is recorded interrupted

        previous = signal.signal(usr_signal, stop_like_sigterm)
        argv = sys.argv
        try:
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as done:  # the command's cli_main: its exit code
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        finally:
            sys.argv = argv
            signal.signal(usr_signal, previous)
        if received and code == 128 + signal.SIGTERM and callable(submitit_handler):
            submitit_handler(usr_signal, None)  # stopped early: requeue this task (the same command), exit
        return code


class SlurmJobWorker:
    """A :class:`harness.pool.Worker` handle on one array task: poll, wait, send_signal and kill via Slurm."""

    def __init__(self, job: Any, poll_seconds: float) -> None:
        self.job, self.poll_seconds = job, poll_seconds
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            states = job_states([self.job.job_id])
            if states is not None and self.job.job_id not in states:
                self.code = _exit_code(self.job)
        return self.code

    def wait(self, timeout: float | None = None) -> int:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"Slurm job {self.job.job_id}", timeout or 0)
            time.sleep(min(self.poll_seconds, left))
        return code

    def send_signal(self, sig: int) -> None:
        subprocess.run(["scancel", f"--signal={signal.Signals(sig).name}", self.job.job_id], check=False)

    def kill(self) -> None:
        subprocess.run(["scancel", self.job.job_id], check=False)


class SlurmWorkers:
    """Starts a pool's commands as one Slurm job array with the ``cluster:`` section's resources each."""

    def __init__(self, cluster: ClusterConfig, folder: Path, name: str) -> None:
        self.cluster, self.folder, self.name = cluster, folder.resolve(), name

    def start(self, commands: Sequence[WorkerCommand]) -> list[Worker]:
        executor = make_executor(self.cluster, self.folder, self.name, len(commands))
        shared = {name: value for command in commands for name, value in command.env.items()}
        with environment(shared):  # the storage URL: in the jobs' environment, not in their pickles
            jobs = submit_array(executor, SlurmWorker(), [list(command.args) for command in commands])
        print(
            f"submitted {len(jobs)} workers as Slurm job array {jobs[0].job_id.split('_')[0]} "
            f"(logs: {self.folder}/<job id>/)",
            file=sys.stderr,
            flush=True,
        )
        return [SlurmJobWorker(job, self.cluster.poll_seconds) for job in jobs]


def _exit_code(job: Any) -> int:
    """The worker's exit code from its result; :data:`EXIT_LOST` when it left none or raised."""
    from submitit.core.utils import pickle_load

    path = job.paths.result_pickle
    if not path.exists():
        return EXIT_LOST
    outcome, value = pickle_load(path)
    return value if outcome == "success" and isinstance(value, int) else EXIT_LOST
