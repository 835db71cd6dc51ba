"""Launchers: how the cells of a run get trained, in this process or in N local worker processes.

:func:`train_task` is the whole life of one cell for a run: claim its lock (a cell another run holds is
skipped), check it still needs training, train it (resuming its checkpoint) and record a crash. A
:class:`Launcher` decides where that happens: :class:`InProcessLauncher` (``--jobs 1``, ``torchrun``)
or :class:`LocalProcessLauncher` (``--jobs N``: workers of the :mod:`harness.pool`, one cell each at a
time over a connection to the parent, each cell's output in ``cells/<id>/train.log``, one GPU per
worker on a GPU machine). Both stop on the stop signals of :mod:`harness.stopping`: the running cells
keep their checkpoints. A cluster launcher is one more class with the same ``run`` method that submits
:func:`train_task` calls elsewhere; the trainer does not change.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.config import CellConfig
from harness.distributed import DistContext, broadcast_flag
from harness.errors import UserError, one_line
from harness.plugins import load_plugins, loaded_plugins
from harness.pool import LocalWorkers, Worker, WorkerCommand, stop_workers, usable_cpus
from harness.records import CellOutcome, CellStatus, FinalRecord, StatusRecord, write_record
from harness.results import cell_paths, claim_cell, now
from harness.stopping import Interrupted, StopSignals, watch_parent


@dataclass(frozen=True)
class CellTask:
    """One cell to train into ``exp_dir``; ``final_seen`` is final.json's mtime (ns) when the run planned
    it."""

    cell: CellConfig
    exp_dir: Path
    label: str = ""
    force: bool = False
    final_seen: int | None = None
    progress: bool = True


class Launcher(Protocol):
    """Trains tasks somewhere and yields each one's result as it completes (in any order)."""

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]: ...


def final_mtime(exp_dir: Path, cell_id: str) -> int | None:
    """final.json's modification time in ns (None when absent): tells whether another run rewrote it since."""
    try:
        return cell_paths(exp_dir, cell_id).final.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def record_failed(task: CellTask, reason: str, traceback_text: str | None = None) -> str:
    """Write the cell's ``failed`` status.json and final.json with ``reason`` (call holding its lock)."""
    paths = cell_paths(task.exp_dir, task.cell.cell_id)
    write_record(
        paths.status,
        StatusRecord(status=CellStatus.FAILED, reason=reason, finished=now(), traceback=traceback_text),
    )
    write_record(
        paths.final,
        FinalRecord(
            cell_id=task.cell.cell_id, status=CellStatus.FAILED, reason=reason, metrics={}, finished=now()
        ),
    )
    return reason


def _record_crash(task: CellTask, err: BaseException) -> str:
    return record_failed(task, f"{type(err).__name__}: {err}", traceback.format_exc())


def _still_to_train(task: CellTask) -> bool:
    """Under the cell's lock: False when another run finished (or re-ran, with --force) the cell meanwhile."""
    paths = cell_paths(task.exp_dir, task.cell.cell_id)
    if paths.status_value() != CellStatus.FINISHED:
        return True
    return task.force and final_mtime(task.exp_dir, task.cell.cell_id) == task.final_seen


def train_task(task: CellTask, ctx: DistContext | None = None) -> CellOutcome:
    """Claim, train and record one cell; under torchrun the main rank claims and every rank follows."""
    from harness.train import train_cell

    cell_id, main = task.cell.cell_id, ctx is None or ctx.is_main
    paths = cell_paths(task.exp_dir, cell_id)
    with claim_cell(paths) if main else _NOT_CLAIMED as claimed:
        if broadcast_flag(main and not claimed, ctx):
            return CellOutcome(cell_id, CellStatus.BUSY)
        if broadcast_flag(main and not _still_to_train(task), ctx):
            return CellOutcome(cell_id, CellStatus.DONE_ELSEWHERE)
        if task.force and main:  # --force retrains from scratch
            paths.checkpoint.unlink(missing_ok=True)
        if task.progress and main:
            print(f"[{task.label}] {cell_id}", file=sys.stderr, flush=True)
        try:
            outcome = train_cell(task.cell, paths, progress=task.progress, ctx=ctx)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # a crash in one cell must not lose the others
            return CellOutcome(cell_id, CellStatus.FAILED, _record_crash(task, err) if main else str(err))
    return outcome


class _NotClaimed:
    """The claim of a non-main torchrun rank: it holds no lock and follows the main rank's decision."""

    def __enter__(self) -> bool:
        return True

    def __exit__(self, *exc: object) -> None:
        return None


_NOT_CLAIMED = _NotClaimed()


class InProcessLauncher:
    """Trains the tasks one after the other in this process (``--jobs 1``; every rank under ``torchrun``)."""

    def __init__(self, ctx: DistContext | None = None, signals: StopSignals | None = None) -> None:
        self.ctx, self.signals = ctx, signals or StopSignals()

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        for task in tasks:
            with self.signals.armed():  # a stop signal interrupts the cell at once; it keeps its checkpoint
                result = train_task(task, self.ctx)
            yield result


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (``CUDA_VISIBLE_DEVICES``, else every device torch sees); [] on
    CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [part.strip() for part in listed.split(",") if part.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def default_jobs(cells: Sequence[CellConfig]) -> int:
    """What the machine allows: one cell per visible GPU, else cores // ``train.threads`` (at least 1)."""
    gpus = visible_gpus()
    if gpus:
        return len(gpus)
    cores = usable_cpus()
    threads = max((cell.train.threads or cores for cell in cells), default=cores)
    return max(1, cores // threads)


def serve_cells(fd: int, plugins: Sequence[str] = ()) -> int:
    """A cell worker: train the tasks the parent sends over connection ``fd``, one at a time, each cell's
    output in its train.log, until the parent sends None or goes; the exit code (``128 + signal`` after a
    stop).

    It first imports the parent's ``plugins`` (:func:`harness.plugins.loaded_plugins`), so that their
    losses, backbones and datasets are registered before any task arrives. A stop signal interrupts the
    running cell at once: it keeps its checkpoint (its status stays ``running``, so the next run resumes
    it) and its lock goes with this process.
    """
    conn = multiprocessing.connection.Connection(fd)
    failed: str | None = None
    try:
        load_plugins(plugins)
    except UserError as err:  # the parent imported them, so this is rare: each task gets the message
        failed = str(err)
    with StopSignals().installed() as signals:
        watch_parent(signals)  # a parent killed with SIGKILL cannot pass the signal on
        try:
            while True:
                with signals.armed():
                    task = conn.recv()
                    if task is None:
                        return 0
                    result = _train_logged(task) if failed is None else failed
                conn.send(result)
        except (EOFError, BrokenPipeError):  # the parent is gone: an orphan trains nothing more
            return 0
        except Interrupted as stop:
            return stop.exit_code


def _train_logged(task: CellTask) -> CellOutcome | str:
    """:func:`train_task` with stdout and stderr in ``cells/<id>/train.log``; a user error comes back as its
    text."""
    log = cell_paths(task.exp_dir, task.cell.cell_id).root / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            return train_task(task)
        except UserError as err:
            return str(err)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _cell_worker(fd: int, gpu: str | None) -> WorkerCommand:
    """The command of a cell worker serving connection ``fd``, importing this process's plugins; on a GPU
    machine it sees one GPU."""
    serve = f"launch.serve_cells({fd}, {loaded_plugins()!r})"
    return WorkerCommand(
        ["-c", f"import sys, harness.launch as launch; sys.exit({serve})"],
        {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {},
        (fd,),
    )


@dataclass
class _Slot:
    """One cell worker, the parent's end of its connection and the cell it is training (None: idle or
    gone)."""

    worker: Worker
    conn: multiprocessing.connection.Connection
    cell_id: str | None = None


class LocalProcessLauncher:
    """Trains up to ``jobs`` tasks at once in a pool of worker processes; on a GPU machine one GPU per
    worker."""

    def __init__(self, jobs: int, gpus: Sequence[str] = (), signals: StopSignals | None = None) -> None:
        self.jobs, self.gpus, self.signals = jobs, list(gpus), signals or StopSignals()

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        pairs = [socket.socketpair() for _ in range(min(self.jobs, len(tasks)))]
        gpus = [self.gpus[k % len(self.gpus)] if self.gpus else None for k in range(len(pairs))]
        try:
            commands = [
                _cell_worker(theirs.fileno(), gpu) for (_, theirs), gpu in zip(pairs, gpus, strict=True)
            ]
            workers = LocalWorkers().start(commands)
        finally:
            for _, theirs in pairs:
                theirs.close()
        slots = [
            _Slot(worker, multiprocessing.connection.Connection(ours.detach()))
            for worker, (ours, _) in zip(workers, pairs, strict=True)
        ]
        try:
            yield from _dispatch(slots, list(reversed(tasks)), self.signals)
        except BaseException as err:  # a stop signal (or the caller gave up): the workers stop too
            stop_workers(workers, err.signum if isinstance(err, Interrupted) else signal.SIGINT)
            raise
        else:
            stop_workers(workers, None)
        finally:
            for slot in slots:
                slot.conn.close()


def _dispatch(slots: list[_Slot], todo: list[CellTask], signals: StopSignals) -> Iterator[CellOutcome]:
    """Hand each idle worker the next task and yield results as they come; a worker that dies fails its
    cell."""

    def hand_out(slot: _Slot) -> None:
        task = todo.pop() if todo else None
        try:
            slot.conn.send(task)
        except OSError:  # the worker is gone; another one takes its task
            todo.extend([task] if task else [])
            task = None
        slot.cell_id = task.cell.cell_id if task else None

    for slot in slots:
        hand_out(slot)
    while busy := [slot for slot in slots if slot.cell_id is not None]:
        with signals.armed():
            ready = multiprocessing.connection.wait([slot.conn for slot in busy])
        for slot in busy:
            if slot.conn not in ready or slot.cell_id is None:
                continue
            try:
                payload = slot.conn.recv()
            except (EOFError, OSError):  # its end closed: the worker died
                yield CellOutcome(
                    slot.cell_id,
                    CellStatus.FAILED,
                    f"its worker process died (exit code {slot.worker.wait()}); "
                    "re-run to resume it from its last checkpoint",
                )
                slot.cell_id = None
                continue
            if isinstance(payload, str):
                raise UserError(one_line(payload))
            yield payload
            hand_out(slot)
    for task in reversed(todo):  # left when every worker died
        yield CellOutcome(
            task.cell.cell_id, CellStatus.FAILED, "not started: every worker process stopped; re-run"
        )


def make_launcher(jobs: int, ctx: DistContext | None = None, signals: StopSignals | None = None) -> Launcher:
    """The local launcher for ``jobs`` cells at once (in-process for one job, or under torchrun)."""
    if ctx is not None or jobs <= 1:
        return InProcessLauncher(ctx, signals)
    return LocalProcessLauncher(jobs, visible_gpus(), signals)
