"""Study workers as Slurm jobs: ``harness.tune`` and ``harness.fair`` with ``--launcher slurm``.

The N workers of a study go in as one submitit job array; each array task runs the worker's own
command line in-process (``main(argv)`` of the tool, ``--worker K`` included), with the storage URL in
its environment as a local worker has it (never in a file or on a command line). The storage must be
one every node reaches (:func:`harness.cluster.jobs.require_shared_storage`).
Before its time limit (or on preemption) a worker stops as on SIGTERM (its running trial is recorded
interrupted, to be retried as without Slurm) and submitit requeues it to go on filling the study.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import submitit

from harness.cluster.jobs import job_states, make_executor, submit_array
from harness.config import ClusterConfig
from harness.errors import EXIT_USER_ERROR, UserError, one_line
from harness.tune.interrupt import Interrupted, StopSignals

EXIT_LOST = 1  # the exit code of a worker whose job ended without a result (cancelled, killed)


class SlurmWorker(submitit.helpers.Checkpointable):
    """One array task: ``main(argv)`` of ``module``; requeued (to go on) after its time-limit signal."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self, argv: list[str]) -> int:
        main = importlib.import_module(self.module).main
        usr_signal = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        submitit_handler = signal.getsignal(usr_signal)  # submitit's: checkpoint(), requeue, exit
        received: list[int] = []

        def stop_like_sigterm(signum: int, frame: object) -> None:
            received.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's own stop: its trial is recorded interrupted

        previous = signal.signal(usr_signal, stop_like_sigterm)
        try:
            code = int(main(argv) or 0)
        except UserError as err:  # as a local worker reports it: one line, exit code 2
            print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
            code = EXIT_USER_ERROR
        finally:
            signal.signal(usr_signal, previous)
        if received and callable(submitit_handler):
            submitit_handler(usr_signal, None)  # requeues this task (the same argv) and exits
        return code


def run_slurm_workers(
    commands: Sequence[Sequence[str]],
    module: str,
    storage_env: str,
    storage_url: str,
    cluster: ClusterConfig,
    folder: Path,
    name: str,
    signals: StopSignals,
) -> list[int]:
    """Submit one worker per command (``python -m tool *argv``) as one array running ``module``'s main; wait.

    Returns the workers' exit codes. A stop signal to this process cancels the jobs (their workers record
    their running trials as interrupted), waits for them to end, then raises :class:`Interrupted`.
    """
    executor = make_executor(cluster, folder.resolve(), name, len(commands))
    before = os.environ.get(storage_env)
    os.environ[storage_env] = storage_url  # sbatch passes this environment on to the jobs
    try:
        jobs = submit_array(executor, SlurmWorker(module), [list(command[3:]) for command in commands])
    finally:
        if before is None:
            os.environ.pop(storage_env, None)
        else:
            os.environ[storage_env] = before
    ids = [job.job_id for job in jobs]
    print(
        f"submitted {len(ids)} workers as Slurm job array {ids[0].split('_')[0]} (logs: {folder}/<job id>/)",
        file=sys.stderr,
        flush=True,
    )
    try:
        with signals.armed():
            _wait(ids, cluster.poll_seconds)
    except Interrupted:
        subprocess.run(["scancel", *ids], check=False)
        _wait(ids, cluster.poll_seconds)
        raise
    return [_exit_code(job) for job in jobs]


def _wait(job_ids: list[str], poll_seconds: float) -> None:
    """Until squeue holds none of ``job_ids`` (a failed squeue is asked again)."""
    while (states := job_states(job_ids)) is None or states:
        time.sleep(poll_seconds)


def _exit_code(job: submitit.Job[int]) -> int:
    """The worker's exit code from its result; :data:`EXIT_LOST` when it left none or raised."""
    from submitit.core.utils import pickle_load

    path = job.paths.result_pickle
    if not path.exists():
        return EXIT_LOST
    outcome, value = pickle_load(path)
    return value if outcome == "success" and isinstance(value, int) else EXIT_LOST
