"""The ``cluster:`` section of an experiment file: what each Slurm job of ``--launcher slurm`` asks for.

None of it changes what a cell trains, so it never enters a cell id or a study fingerprint: cells see
only the protocol and the grid axes (:func:`harness.config.expand_cells` leaves this section out).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SbatchValue = str | int | float | bool

# sbatch options the harness writes itself, each from its own setting (or its own job: the array, the logs)
OWN_SBATCH_OPTIONS = {
    "partition": "cluster.partition",
    "time": "cluster.time_minutes",
    "gpus-per-node": "cluster.gpus",
    "cpus-per-task": "cluster.cpus",
    "mem": "cluster.mem_gb",
    "job-name": "cluster.job_name",
    "signal": "cluster.signal_minutes",
    "array": "the cells to train",
    "output": "the job logs",
    "error": "the job logs",
}


class ClusterConfig(BaseModel):
    """Slurm resources per cell (one array task each) and how often a cell may be requeued."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None  # null: the cluster's default partition
    time_minutes: int = Field(60, ge=1)  # wall-clock limit of one cell's job (a requeue starts a new one)
    gpus: int = Field(0, ge=0)  # GPUs per cell (one for the paper's grid)
    cpus: int = Field(1, ge=1)  # CPU cores per cell: train.threads plus data.workers is a fair start
    mem_gb: float | None = Field(None, gt=0)  # memory per cell (null: the partition's default)
    max_running: int | None = Field(None, ge=1)  # array tasks running at once (null: no limit of ours)
    max_requeues: int = Field(3, ge=0)  # requeues (time limit, preemption) before the cell is failed
    signal_minutes: int = Field(2, ge=1)  # how long before the time limit the job is told to checkpoint
    poll_seconds: float = Field(10, gt=0)  # how often the submitting process asks Slurm about its jobs
    # how long a job that ended without a final record gets for the cell's files to show on the submitting
    # machine (an NFS client caches directory listings) before the cell counts as lost
    settle_seconds: float = Field(60, ge=0)
    job_name: str | None = None  # null: the experiment's name
    setup: list[str] = Field(default_factory=list)  # shell lines each job runs first (module load ...)
    sbatch: dict[str, SbatchValue] = Field(default_factory=dict)  # more sbatch options, e.g. account: lab

    @field_validator("sbatch")
    @classmethod
    def _not_ours(cls, options: dict[str, SbatchValue]) -> dict[str, SbatchValue]:
        for key in options:
            owner = OWN_SBATCH_OPTIONS.get(key.replace("_", "-").lstrip("-"))
            if owner is not None:
                raise ValueError(f"{key!r} is set by {owner}; remove it from cluster.sbatch")
        return options

    @model_validator(mode="after")
    def _signal_inside_limit(self) -> Any:
        if self.signal_minutes >= self.time_minutes:
            raise ValueError(
                f"signal_minutes ({self.signal_minutes}) must be below time_minutes ({self.time_minutes}): "
                "the job is told to checkpoint that long before its time limit"
            )
        return self
