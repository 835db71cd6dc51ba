"""Slurm through submitit: whether Slurm is there, the executor a ``cluster:`` section asks for, job states.

Job states come from ``squeue --states=all`` (the jobs the controller still holds), which needs no
accounting database; a job that squeue lists in an end state or no longer lists has ended, and what
it left in the results folder says how.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig
from harness.errors import UserError

SLURM_TOOLS = ("sbatch", "squeue", "srun")
SQUEUE_SECONDS = 60  # how long one squeue may take before this poll counts as failed
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT"}
END_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}


def add_launcher_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--launcher local|slurm``: where ``what`` run (slurm: Slurm jobs with the ``cluster:`` settings)."""
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help=f"where {what} run: local (this machine; the default) or slurm (Slurm jobs with the file's "
        "cluster: settings; see docs/cluster.md)",
    )


def require_slurm(option: str = "--launcher slurm") -> None:
    """Raise a one-line UserError unless Slurm's client commands and submitit are there."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"{option}: no {', '.join(missing)} on PATH, so no Slurm cluster to submit to; run the command "
            "on a machine of the cluster (its login node), or use --launcher local, with --shard i/n on "
            "each machine to split a grid by hand (docs/cluster.md)"
        )
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError(
            f"{option} needs submitit, which is not installed: pip install 'gpw-harness[cluster]'"
        ) from None


def require_shared_storage(storage_url: str, shown: str) -> None:
    """For study workers on Slurm: refuse (one line) a storage the nodes cannot share (SQLite), then
    :func:`require_slurm`. ``shown`` is the URL as messages show it (no password)."""
    if storage_url.startswith("sqlite"):
        raise UserError(
            f"--launcher slurm: the storage {shown} is SQLite, which workers on several nodes cannot share "
            "safely; give --storage journal:FILE with FILE on the shared filesystem, or an RDB URL such as "
            "postgresql://user:password@host/db"
        )
    require_slurm()


def make_executor(cluster: ClusterConfig, folder: Path, name: str, array_size: int) -> Any:
    """A submitit SlurmExecutor with the section's resources; its files go to ``folder/<job id>/``.

    submitit's own limit on time-outs is set above ``max_requeues``: the harness counts every requeue
    (time limit or preemption) itself and fails the cell with the reason (:mod:`harness.cluster.task`).
    """
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=cluster.max_requeues + 1)
    parameters: dict[str, Any] = {
        "job_name": cluster.job_name or name,
        "time": cluster.time_minutes,
        "cpus_per_task": cluster.cpus,
        "signal_delay_s": cluster.signal_minutes * 60,
        "array_parallelism": min(cluster.max_running or array_size, array_size),
        "additional_parameters": dict(cluster.sbatch),
    }
    if cluster.partition:
        parameters["partition"] = cluster.partition
    if cluster.gpus:
        parameters["gpus_per_node"] = cluster.gpus
    if cluster.mem_gb:
        parameters["mem"] = f"{math.ceil(cluster.mem_gb * 1024)}M"
    source = shlex.quote(str(Path(__file__).resolve().parents[2]))  # the folder holding this harness
    parameters["setup"] = [
        f'export PYTHONPATH={source}"${{PYTHONPATH:+:$PYTHONPATH}}"',  # the jobs import this copy
        # torch's threads: the job's cores (an explicit OMP_NUM_THREADS, or train.threads, still decides)
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"',
        *cluster.setup,
    ]
    executor.update_parameters(**parameters)
    return executor


def submit_array(executor: Any, function: Any, items: Sequence[Any]) -> list[Any]:
    """``executor.map_array(function, items)``: the jobs; sbatch refusing them is one UserError line."""
    from submitit.core.utils import FailedJobError

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint: it is in err
            return list(executor.map_array(function, items))
    except FailedJobError as err:
        lines = [line.removeprefix("sbatch: error: ") for line in str(err).strip().splitlines()]
        raise UserError(
            f"sbatch refused the job array: {'; '.join(lines) or err}; check the cluster: section "
            "(partition, time_minutes, gpus, cpus, mem_gb, sbatch)"
        ) from None


def job_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """The squeue state (PENDING, RUNNING, REQUEUED, ...) of each of ``job_ids`` not ended (None: no answer).

    Array tasks are listed one by one (``123_4``); a job missing from the answer has ended.
    """
    wanted = set(job_ids)
    if not wanted:
        return {}
    command = ["squeue", "--noheader", "--array", f"--user={os.getuid()}", "--states=all", "--format=%i|%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    states: dict[str, str] = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted and state not in END_STATES:
            states[job_id] = state
    return states
