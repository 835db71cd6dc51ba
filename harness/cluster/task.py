"""What one Slurm array task runs: a cell's life, its logs beside the cell, checkpoint and requeue on signals.

:class:`SlurmCell` is a submitit ``Checkpointable``. It calls :func:`harness.launch.train_task`, the same
life a local run gives a cell (claim its lock, resume its checkpoint, record a crash), with the job's
output in ``cells/<id>/slurm-<job id>.out`` and ``.err``. Slurm's signals make the trainer save a fresh
checkpoint after its current iteration (:data:`harness.train.CHECKPOINT_AND_STOP`):

- the signal submitit asks for before the time limit (and on preemption, with
  ``SlurmctldParameters=preempt_send_user_signal``): then submitit requeues the task, which resumes
  from that checkpoint;
- SIGTERM (``scancel``, ``scontrol requeue``, preemption without the signal): the task leaves; Slurm
  requeues it or the next submission trains the cell on from there.

Every requeue is counted (Slurm's ``SLURM_RESTART_COUNT``, written to the cell's ``slurm.json``); past
``cluster.max_requeues`` the cell is recorded failed with the reason instead of requeued again.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import submitit

from harness.files import atomic_write_json, read_json_if_exists
from harness.launch import CellTask, record_failed, train_task
from harness.plugins import load_plugins
from harness.records import CellOutcome, CellStatus
from harness.results import cell_paths, claim_cell, now
from harness.train import CHECKPOINT_AND_STOP, CheckpointedStop

JOB_RECORD = "slurm.json"  # in the cell's folder: its job, log files and requeues


def read_job_record(cell_dir: Path) -> dict[str, Any]:
    """The cell's ``slurm.json`` ({} when it was never submitted)."""
    data = read_json_if_exists(cell_dir / JOB_RECORD, remedy="delete it; the next submission rewrites it")
    return data if isinstance(data, dict) else {}


def update_job_record(cell_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into the cell's ``slurm.json``."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cell_dir / JOB_RECORD, {**read_job_record(cell_dir), **fields})


def restart_count() -> int:
    """How many times Slurm has requeued this job (``SLURM_RESTART_COUNT``; 0 outside Slurm)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def current_job_id() -> str:
    """This task's Slurm job id as submitit names it (``<array job>_<index>`` for an array task)."""
    array_job, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and index:
        return f"{array_job}_{index}"
    return os.environ.get("SLURM_JOB_ID", "local")


@contextmanager
def output_to(stdout: Path, stderr: Path) -> Iterator[None]:
    """File descriptors 1 and 2 appended to ``stdout`` and ``stderr`` for the block (a requeue appends)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(stdout, "a", encoding="utf-8") as out, open(stderr, "a", encoding="utf-8") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def checkpoint_on_signals(signals: tuple[int, ...]) -> Iterator[list[int]]:
    """For the block, each of ``signals`` asks the trainer to checkpoint and stop; yields those received."""
    received: list[int] = []

    def ask(signum: int, frame: object) -> None:
        received.append(signum)
        CHECKPOINT_AND_STOP.set()

    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        signal.signal(signum, ask)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        CHECKPOINT_AND_STOP.clear()


def requeue_limit_reason(stops: int, limit: int) -> str:
    """Why a cell stopped ``stops`` times by its time limit or preemption is failed instead of requeued."""
    return (
        f"stopped {stops} times by its time limit or preemption, more than cluster.max_requeues={limit} "
        "requeues allow; raise cluster.time_minutes or cluster.max_requeues, then run the command again: "
        "the cell resumes from its checkpoint"
    )


class SlurmCell(submitit.helpers.Checkpointable):
    """The function of a grid's job array: ``SlurmCell(max_requeues)(task)`` trains one cell in one task.

    On Slurm's time-limit or preemption signal submitit calls :meth:`checkpoint` (Checkpointable's: this
    same call again) and requeues the task, after the trainer has saved the cell's checkpoint.
    """

    def __init__(self, max_requeues: int, plugins: Sequence[str] = ()) -> None:
        self.max_requeues = max_requeues
        self.plugins = tuple(plugins)  # the submitter's (harness.plugins.loaded_plugins), imported first

    def __call__(self, task: CellTask) -> CellOutcome:
        paths = cell_paths(task.exp_dir, task.cell.cell_id)
        job_id, requeues = current_job_id(), restart_count()
        out, err = paths.root / f"slurm-{job_id}.out", paths.root / f"slurm-{job_id}.err"
        paths.root.mkdir(parents=True, exist_ok=True)
        with output_to(out, err):
            update_job_record(
                paths.root,
                job_id=job_id,
                requeues=requeues,
                started=now(),
                host=socket.gethostname(),
                stdout=out.name,
                stderr=err.name,
            )
            print(f"{task.cell.cell_id}: Slurm job {job_id}, requeued {requeues} times", flush=True)
            if requeues > self.max_requeues:
                return self._give_up(task, requeues)
            load_plugins(self.plugins)  # a fresh interpreter: the plugin losses, backbones, datasets
            return self._train(task)

    def _train(self, task: CellTask) -> CellOutcome:
        """The cell's life; on a signal a fresh checkpoint, then a requeue (submitit) or exit (SIGTERM)."""
        usr_signal = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        submitit_handler = signal.getsignal(usr_signal)  # submitit's: checkpoint(), requeue, exit
        with checkpoint_on_signals((usr_signal, signal.SIGTERM)) as received:
            try:
                return train_task(task)
            except CheckpointedStop as stop:
                signum = received[0] if received else signal.SIGTERM
                print(f"{stop}; signal {signal.Signals(signum).name}", flush=True)
        if signum == usr_signal and callable(submitit_handler):
            if restart_count() + 1 > self.max_requeues:
                return self._give_up(task, restart_count() + 1)
            submitit_handler(usr_signal, None)  # calls self.checkpoint(task), requeues this task and exits
        raise SystemExit(128 + signum)

    def _give_up(self, task: CellTask, requeues: int) -> CellOutcome:
        """Record the cell failed (past its requeue limit), unless another run holds or finished it."""
        cell_id = task.cell.cell_id
        paths = cell_paths(task.exp_dir, cell_id)
        with claim_cell(paths) as claimed:
            if not claimed:
                return CellOutcome(cell_id, CellStatus.BUSY)
            if paths.status_value() == CellStatus.FINISHED:
                return CellOutcome(cell_id, CellStatus.DONE_ELSEWHERE)
            reason = record_failed(task, requeue_limit_reason(requeues, self.max_requeues))
        print(f"{cell_id} failed: {reason}", file=sys.stderr, flush=True)
        return CellOutcome(cell_id, CellStatus.FAILED, reason)
