"""``harness.run --launcher slurm``: the cells still to train as one submitit job array, watched to the end.

:class:`SlurmLauncher` is a :class:`harness.launch.Launcher`: ``run(tasks)`` submits the tasks whose
cells are in no live Slurm job (a cell's ``slurm.json`` names its latest job; one still pending or
running from an earlier submission is watched, not submitted twice), then polls ``squeue`` and the
results folder and yields each cell's result once its job has ended. One display covers the whole
grid: cells finished, running, pending and failed. A job gone without a final record (cancelled, out of
time or memory, its node lost) is a failed result for this run; running the same command again
submits the cell anew and it resumes from its checkpoint.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.cluster.jobs import RUNNING_STATES, job_states, make_executor, submit_array
from harness.cluster.task import SlurmCell, read_job_record, update_job_record
from harness.config import ClusterConfig, Experiment
from harness.errors import UserError
from harness.launch import CellTask
from harness.plugins import loaded_plugins
from harness.records import CellOutcome, CellStatus
from harness.results import cell_paths, claim_cell, folder_lock, now
from harness.stopping import Interrupted, StopSignals

SUBMITIT_FOLDER = "slurm"  # in the results folder: submitit's pickles, sbatch scripts and start-up logs


class GridProgress:
    """The submitting process's one display: cells finished, running, pending, failed (tqdm on a terminal)."""

    def __init__(self, total: int, finished: int, enabled: bool, out: Any = None) -> None:
        self.total, self.enabled, self.out = total, enabled, out or sys.stderr
        self.finished = finished  # before this run
        self.shown: tuple[int, ...] | None = None
        self.bar: Any = None
        if enabled and self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=finished, desc="cells", unit="cell", file=self.out)

    def show(self, ended: Counter[str], running: int, pending: int) -> None:
        """Redraw with the results so far (``ended``: finished/failed counts) and the live jobs' states."""
        numbers = (self.finished + ended[CellStatus.FINISHED], running, pending, ended[CellStatus.FAILED])
        if not self.enabled or numbers == self.shown:
            return
        if self.bar is not None:
            self.bar.update(numbers[0] - self.bar.n)
            self.bar.set_postfix(running=running, pending=pending, failed=numbers[3])
        else:
            print(
                f"[slurm] {numbers[0]}/{self.total} cells finished, {running} running, {pending} pending, "
                f"{numbers[3]} failed",
                file=self.out,
                flush=True,
            )
        self.shown = numbers

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def collect_command(module: str, argv: Sequence[str]) -> str:
    """The command that collects what ``python -m module *argv --no-wait`` submitted: the same, waiting."""
    return shlex.join(["python", "-m", module, *(arg for arg in argv if arg != "--no-wait")])


def lost_reason(cell_id: str, job_id: str) -> str:
    """Why a cell whose job ended without a final record failed, and what to do."""
    return (
        f"its Slurm job {job_id} ended without a result (cancelled, out of time or memory, or its node "
        f"failed; see cells/{cell_id}/slurm-{job_id}.err and {SUBMITIT_FOLDER}/{job_id}/); run the "
        "command again to submit it anew: it resumes from its checkpoint"
    )


class SlurmLauncher:
    """Trains tasks as one Slurm job array through submitit; yields each cell's result when its job ends."""

    def __init__(
        self,
        cluster: ClusterConfig,
        name: str,
        grid_size: int,
        *,
        wait: bool = True,
        progress: bool = True,
        collect_command: str = "",
    ) -> None:
        self.cluster, self.name, self.grid_size, self.wait = cluster, name, grid_size, wait
        self.progress, self.collect_command = progress, collect_command

    @classmethod
    def for_experiment(cls, experiment: Experiment, grid_size: int, **options: Any) -> SlurmLauncher:
        """The launcher of ``experiment``'s cells, its ``cluster:`` section (``grid_size``: cells shown)."""
        return cls(experiment.cluster, experiment.cluster.job_name or experiment.name, grid_size, **options)

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        if not tasks:
            return
        tasks = [replace(task, exp_dir=task.exp_dir.resolve()) for task in tasks]  # the nodes' view
        exp_dir = tasks[0].exp_dir
        with folder_lock(exp_dir):  # two submissions at once: the second sees the first's jobs
            watched, to_submit, busy = self._plan(tasks)
            submitted = self._submit(exp_dir, to_submit)
        self._announce(submitted, watched, busy)
        yield from (CellOutcome(cell_id, CellStatus.BUSY) for cell_id in busy)
        if self.wait:
            yield from self._watch(exp_dir, {**watched, **submitted}, finished=self.grid_size - len(tasks))

    def _plan(self, tasks: list[CellTask]) -> tuple[dict[str, str], list[CellTask], list[str]]:
        """Cells in a live job of an earlier submission (id -> job id), tasks to submit, busy cells."""
        earlier = {t.cell.cell_id: read_job_record(cell_paths(t.exp_dir, t.cell.cell_id).root) for t in tasks}
        jobs = {cell_id: record["job_id"] for cell_id, record in earlier.items() if record.get("job_id")}
        states = job_states(jobs.values())
        if states is None:
            raise UserError(
                "squeue failed, so it is unknown which cells are in Slurm jobs already; check the cluster "
                "(squeue) and run the command again"
            )
        watched = {cell_id: job for cell_id, job in jobs.items() if job in states}
        to_submit, busy = [], []
        for task in tasks:
            cell_id = task.cell.cell_id
            if cell_id in watched:
                continue
            paths = cell_paths(task.exp_dir, cell_id)
            with claim_cell(paths) as free:  # a local run may be training it
                if not free:
                    busy.append(cell_id)
                    continue
                if task.force:  # from scratch here, so that a requeued task resumes its own checkpoint
                    for path in (paths.final, paths.status, paths.checkpoint):
                        path.unlink(missing_ok=True)
                to_submit.append(replace(task, force=False, final_seen=None))
        return watched, to_submit, busy

    def _submit(self, exp_dir: Path, tasks: list[CellTask]) -> dict[str, str]:
        """One job array for ``tasks``; records each cell's job in its ``slurm.json``; cell id -> job id."""
        if not tasks:
            return {}
        executor = make_executor(self.cluster, exp_dir / SUBMITIT_FOLDER, self.name, len(tasks))
        jobs = submit_array(executor, SlurmCell(self.cluster.max_requeues, loaded_plugins()), tasks)
        submitted = {}
        for task, job in zip(tasks, jobs, strict=True):
            cell_dir = cell_paths(exp_dir, task.cell.cell_id).root
            update_job_record(cell_dir, job_id=job.job_id, submitted=now(), requeues=0)
            submitted[task.cell.cell_id] = job.job_id
        return submitted

    def _announce(self, submitted: dict[str, str], watched: dict[str, str], busy: list[str]) -> None:
        arrays = sorted({job.split("_")[0] for job in submitted.values()})
        parts = [
            f"submitted {len(submitted)} cells as Slurm job array {', '.join(arrays)}"
            if submitted
            else "submitted nothing"
        ]
        if watched:
            earlier = sorted({job.split("_")[0] for job in watched.values()})
            parts.append(
                f"{len(watched)} cells already in jobs {', '.join(earlier)} of an earlier submission"
            )
        if busy:
            parts.append(f"{len(busy)} cells being trained by another run")
        line = "; ".join(parts) + " (logs: cells/<id>/slurm-<job id>.out and .err)"
        if not self.wait:
            line += f"; collect the results, once the jobs are done, with: {self.collect_command}"
        print(line, file=sys.stderr, flush=True)

    def _watch(self, exp_dir: Path, jobs: dict[str, str], finished: int) -> Iterator[CellOutcome]:
        """Poll until every job in ``jobs`` (cell id -> job id) has ended; yield each cell's result then.

        Ctrl-C or SIGTERM stops the watching, not the jobs: it says how to stop them or collect later.
        """
        display = GridProgress(self.grid_size, finished, self.progress)
        ended: Counter[str] = Counter()
        live = dict(jobs)
        settling: dict[str, float] = {}  # cell id -> when its job was first seen ended without a result
        try:
            with StopSignals().installed() as signals:
                while live:
                    with signals.armed():
                        states = job_states(live.values())
                    for cell_id, job_id in list(live.items()) if states is not None else []:
                        if states is not None and job_id in states:
                            continue
                        first_seen = settling.setdefault(cell_id, time.monotonic())
                        result = ended_result(exp_dir, cell_id, job_id)
                        if result is None and time.monotonic() - first_seen < self.cluster.settle_seconds:
                            continue  # its files may not show on this machine yet
                        del live[cell_id]
                        result = result or CellOutcome(
                            cell_id, CellStatus.FAILED, lost_reason(cell_id, job_id)
                        )
                        if result.status != CellStatus.BUSY:
                            trained = result.status in (CellStatus.FINISHED, CellStatus.DONE_ELSEWHERE)
                            ended[CellStatus.FINISHED if trained else CellStatus.FAILED] += 1
                        yield result
                    if states is not None:  # None: squeue did not answer this time
                        running = sum(states.get(job) in RUNNING_STATES for job in live.values())
                        display.show(ended, running, len(live) - running)
                    if live:
                        with signals.armed():
                            time.sleep(self.cluster.poll_seconds)
        except Interrupted:
            display.close()
            print(
                f"stopped watching; the Slurm jobs go on (scancel {' '.join(sorted(set(live.values())))} "
                f"stops them); collect the results with: {self.collect_command}",
                file=sys.stderr,
            )
            raise
        display.close()


def ended_result(exp_dir: Path, cell_id: str, job_id: str) -> CellOutcome | None:
    """The result of a cell whose job has ended: from its final record, else from the job's; None: neither."""
    paths = cell_paths(exp_dir, cell_id)
    final = paths.read_final()
    if final is not None:  # final.json holds an end status (finished or failed)
        return CellOutcome(cell_id, final.status, final.reason)
    outcome = job_outcome(exp_dir, job_id)
    return (
        outcome
        if outcome is not None and outcome.status in (CellStatus.BUSY, CellStatus.DONE_ELSEWHERE)
        else None
    )


def job_outcome(exp_dir: Path, job_id: str) -> CellOutcome | None:
    """The CellOutcome a finished job returned (submitit's result pickle); None when it left none."""
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(exp_dir / SUBMITIT_FOLDER / "%j", job_id=job_id, task_id=0).result_pickle
    if not path.exists():
        return None
    outcome, value = pickle_load(path)
    return value if outcome == "success" and isinstance(value, CellOutcome) else None
