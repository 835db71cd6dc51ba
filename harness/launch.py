"""Launchers: how the cells of a run get trained, in this process or in N local worker processes.

:func:`train_task` is the whole life of one cell for a run: claim its lock (a cell another run holds is
skipped), check it still needs training, train it (resuming its checkpoint) and record a crash. A
:class:`Launcher` decides where that happens: :class:`InProcessLauncher` (``--jobs 1``, ``torchrun``)
or :class:`LocalProcessLauncher` (``--jobs N``: spawned workers, one cell each at a time, each cell's
output in ``cells/<id>/train.log``, one GPU per worker on a GPU machine). A cluster launcher is one
more class with the same ``run`` method that submits :func:`train_task` calls elsewhere; the trainer
does not change.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.config import CellConfig
from harness.distributed import DistContext, broadcast_flag
from harness.errors import UserError, one_line
from harness.plugins import load_plugins, loaded_plugins
from harness.records import CellOutcome, CellStatus, FinalRecord, StatusRecord, write_record
from harness.results import cell_paths, claim_cell, now

STOP_SECONDS = 30  # how long stopped workers get to leave before they are terminated


@dataclass(frozen=True)
class CellTask:
    """One cell to train into ``exp_dir``; ``final_seen`` is final.json's mtime (ns) when the run planned it."""

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


def _record_crash(task: CellTask, err: BaseException) -> str:
    paths = cell_paths(task.exp_dir, task.cell.cell_id)
    reason = f"{type(err).__name__}: {err}"
    write_record(
        paths.status,
        StatusRecord(
            status=CellStatus.FAILED, reason=reason, finished=now(), traceback=traceback.format_exc()
        ),
    )
    write_record(
        paths.final,
        FinalRecord(
            cell_id=task.cell.cell_id, status=CellStatus.FAILED, reason=reason, metrics={}, finished=now()
        ),
    )
    return reason


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

    def __init__(self, ctx: DistContext | None = None) -> None:
        self.ctx = ctx

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        for task in tasks:
            yield train_task(task, self.ctx)


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (``CUDA_VISIBLE_DEVICES``, else every device torch sees); [] on CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [part.strip() for part in listed.split(",") if part.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_jobs(cells: Sequence[CellConfig]) -> int:
    """What the machine allows: one cell per visible GPU, else cores // ``train.threads`` (at least 1)."""
    gpus = visible_gpus()
    if gpus:
        return len(gpus)
    cores = usable_cpus()
    threads = max((cell.train.threads or cores for cell in cells), default=cores)
    return max(1, cores // threads)


def _worker(gpu: str | None, conn: Any, plugins: Sequence[str] = ()) -> None:
    """A spawned worker: train the tasks the parent sends, one at a time, each cell's output in its train.log.

    It first imports the parent's plugin modules (spawn starts a fresh interpreter), so that their losses,
    backbones and datasets are registered before any task arrives.
    """
    if gpu is not None:  # before anything initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        load_plugins(plugins)
    except UserError as err:  # the parent imported them, so this is rare: its next task gets the message
        conn.recv()
        conn.send(str(err))
        return
    try:
        while (task := conn.recv()) is not None:
            conn.send(_train_logged(task))
    except (EOFError, BrokenPipeError):  # the parent is gone: an orphan trains nothing more
        return
    except KeyboardInterrupt:  # Ctrl-C: the cell keeps its checkpoint; its lock goes with this process
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one must not break the exit


def _train_logged(task: CellTask) -> CellOutcome | str:
    """:func:`train_task` with stdout and stderr in ``cells/<id>/train.log``; a user error comes back as its text."""
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass
class _Slot:
    """One worker process, the parent's end of its pipe and the cell it is training (None: idle or gone)."""

    process: Any
    conn: Any
    cell_id: str | None = None


class LocalProcessLauncher:
    """Trains up to ``jobs`` tasks at once in spawned worker processes; on a GPU machine one GPU per worker."""

    def __init__(self, jobs: int, gpus: Sequence[str] = ()) -> None:
        self.jobs, self.gpus = jobs, list(gpus)

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        context = multiprocessing.get_context("spawn")
        slots: list[_Slot] = []
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None  # a scheduler's stop
        try:
            for slot in range(min(self.jobs, len(tasks))):
                gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_worker, args=(gpu, child_end, loaded_plugins()))
                process.start()
                child_end.close()
                slots.append(_Slot(process, parent_end))
            yield from _dispatch(slots, list(reversed(tasks)))
        except BaseException:
            _stop(slots, interrupt=True)
            raise
        else:
            _stop(slots, interrupt=False)
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)


def _dispatch(slots: list[_Slot], todo: list[CellTask]) -> Iterator[CellOutcome]:
    """Hand each idle worker the next task and yield results as they come; a worker that dies fails its cell."""

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
        multiprocessing.connection.wait(
            [slot.conn for slot in busy] + [slot.process.sentinel for slot in busy]
        )
        for slot in busy:
            if slot.conn.poll():
                payload = slot.conn.recv()
                if isinstance(payload, str):
                    raise UserError(one_line(payload))
                yield payload
                hand_out(slot)
            elif not slot.process.is_alive():
                yield CellOutcome(
                    slot.cell_id,
                    CellStatus.FAILED,
                    f"its worker process died (exit code {slot.process.exitcode}); "
                    "re-run to resume it from its last checkpoint",
                )
                slot.cell_id = None
    for task in reversed(todo):  # left when every worker died
        yield CellOutcome(
            task.cell.cell_id, CellStatus.FAILED, "not started: every worker process stopped; re-run"
        )


def _stop(slots: list[_Slot], *, interrupt: bool) -> None:
    """Wait for the workers to leave, first interrupting them when ``interrupt`` (their cells keep their checkpoints)."""
    for slot in slots:
        if interrupt and slot.process.is_alive() and slot.process.pid is not None:
            os.kill(slot.process.pid, signal.SIGINT)
    for slot in slots:
        slot.process.join(STOP_SECONDS)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        slot.conn.close()


def make_launcher(jobs: int, ctx: DistContext | None = None) -> Launcher:
    """The local launcher for ``jobs`` cells at once (in-process for one job, or under torchrun)."""
    if ctx is not None or jobs <= 1:
        return InProcessLauncher(ctx)
    return LocalProcessLauncher(jobs, visible_gpus())
