"""``python -m harness.run FILE``: run an experiment grid into ``results/<experiment>/``, N cells at once.

Finished cells are skipped on a re-run (``--force`` re-runs them), an interrupted cell resumes from
its last checkpoint, ``--jobs N`` trains N cells at once in separate processes (:mod:`harness.launch`),
``--shard i/n`` runs a deterministic subset so several machines can share one experiment, and
``torchrun`` runs each cell data-parallel. Each cell is claimed with a lock, so runs sharing a folder
never train the same cell twice. A cell whose loss or gradient becomes non-finite is recorded as
failed and the grid goes on; the command then exits 1 with a summary. The committed reference runs
under ``results/reference/`` are only written with ``--update-reference``. Ctrl-C or SIGTERM stops
the running cells (each keeps its checkpoint) and exits with 128 + the signal. :func:`run_experiment`
is the runner from Python.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Never, TextIO

from harness.cluster.jobs import add_launcher_argument, require_slurm
from harness.config import CellConfig, Experiment, expand_cells, load_experiment, parse_shard, shard_cells
from harness.distributed import init_from_env, shutdown
from harness.errors import EXIT_USER_ERROR, ArgumentParser, UserError, cli_main
from harness.files import temporaries
from harness.launch import CellTask, Launcher, default_jobs, final_mtime, make_launcher
from harness.options import add_set_option
from harness.plugins import add_import_argument, load_plugins
from harness.preflight import print_preflight, require_preflight
from harness.records import ENDED, CellOutcome, CellStatus
from harness.results import (
    aggregate_reference,
    cell_paths,
    check_cell_records,
    claim_cell,
    experiment_dir,
    folder_lock,
    record_experiment,
    remove_stale_temporaries,
    stale_cells_note,
    write_cells_table,
)
from harness.stopping import StopSignals

if TYPE_CHECKING:
    from tqdm import tqdm

    from harness.distributed import DistContext

EXIT_FAILED_CELLS = 1
REGENERATE_REFERENCE = (
    "python -m harness.run experiments/glyphs-ablation.yaml --results results/reference "
    "--update-reference --force"
)


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of cells at once, at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = ArgumentParser(
        prog="python -m harness.run",
        description="Run an experiment grid (losses x datasets x sizes x seeds).",
        epilog="The committed reference runs (results/reference/<experiment>/) are never written by "
        "a plain run. "
        f"Regenerate one, from a clean commit, with: {REGENERATE_REFERENCE}",
    )
    parser.add_argument("experiment", help="experiment YAML file, e.g. experiments/glyphs-ablation.yaml")
    parser.add_argument(
        "--check", action="store_true", help="validate the file and list the grid, run nothing"
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also decode every listed image of the real datasets before anything runs (slow; a progress "
        "bar)",
    )
    add_set_option(parser, "train.iterations=100")
    parser.add_argument("--force", action="store_true", help="re-run cells that already finished")
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="cells trained at once, each in its own process with its output in cells/<id>/train.log "
        "(default: one per visible GPU, else CPU cores // train.threads)",
    )
    add_launcher_argument(parser, "the cells train (slurm: one job array)")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="with --launcher slurm: submit and return, printing the command that collects the results",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N (0-based): several machines share a grid by hand",
    )
    parser.add_argument("--results", default="results", help="results root folder (default: results)")
    parser.add_argument(
        "--update-reference",
        action="store_true",
        help="allow writing into results/reference/<experiment>/ (regenerating a committed reference)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_import_argument(parser)
    return parser


def describe(experiment: Experiment, cells: list[CellConfig]) -> str:
    """A short summary of the grid."""
    g = experiment.grid
    sizes = g.embedding_sizes if isinstance(g.embedding_sizes, list) else dict(g.embedding_sizes)
    return (
        f"{experiment.name}: {len(cells)} cells = {len(g.losses)} losses x datasets {g.datasets} x "
        f"sizes {sizes} x variants {list(g.variants)} x seeds {g.seeds}"
    )


def is_reference_folder(exp_dir: Path) -> bool:
    """Whether ``exp_dir`` is a committed reference run, ``.../results/reference/<experiment>``."""
    parent = exp_dir.resolve().parent
    return parent.name == "reference" and parent.parent.name == "results"


def check_destination(exp_dir: Path, update_reference: bool) -> None:
    """Refuse to write into a reference run without ``--update-reference`` (and the flag anywhere else)."""
    if is_reference_folder(exp_dir) and not update_reference:
        raise UserError(
            f"{exp_dir} is a committed reference run, which a plain run never writes; run without "
            f"--results to write results/{exp_dir.name}/, or regenerate it: {REGENERATE_REFERENCE}"
        )
    if update_reference and not is_reference_folder(exp_dir):
        raise UserError(
            f"--update-reference: {exp_dir} is not a reference run (results/reference/<experiment>); "
            "drop the flag, or add --results results/reference"
        )


def clean_leftovers(exp_dir: Path) -> None:
    """What a killed run left: temporary files (in cells only when no other run holds them), a finished
    cell's checkpoint.

    Call under the folder lock. A cell whose status says ``running`` while nobody holds its lock is
    left as it is: its run died, and training it resumes from its checkpoint.
    """
    cells_dir = exp_dir / "cells"
    for folder in [exp_dir, *(p for p in exp_dir.iterdir() if p.is_dir() and p != cells_dir)]:
        remove_stale_temporaries(folder)
    for folder in sorted(p for p in cells_dir.iterdir() if p.is_dir()) if cells_dir.is_dir() else []:
        paths = cell_paths(exp_dir, folder.name)
        stale_checkpoint = paths.checkpoint.exists() and paths.status_value() == CellStatus.FINISHED
        if stale_checkpoint or temporaries(folder):
            with claim_cell(paths) as claimed:
                if claimed:
                    remove_stale_temporaries(folder)
                    if stale_checkpoint:
                        paths.checkpoint.unlink(missing_ok=True)


class CellsProgress:
    """The run's one progress display: cells done / total, elapsed, estimated remaining (tqdm on a
    terminal)."""

    def __init__(self, total: int, enabled: bool, out: TextIO | None = None) -> None:
        self.total, self.enabled, self.out, self.done = total, enabled, out or sys.stderr, 0
        self.started = time.monotonic()
        self.bar: tqdm[Never] | None = None
        if enabled and self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="cells", unit="cell", file=self.out, dynamic_ncols=True)

    def update(self, result: CellOutcome) -> None:
        self.done += 1
        if not self.enabled:
            return
        note = f"{result.cell_id} {result.status}" + (f": {result.reason}" if result.reason else "")
        if self.bar is not None:
            self.bar.update(1)
            if result.status != CellStatus.FINISHED:
                self.bar.write(note, file=self.out)
            return
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        print(
            f"[{self.done}/{self.total}] {note} (elapsed {_duration(elapsed)}, about {_duration(left)} left)",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.run``."""
    args = build_parser().parse_args(argv)
    check_launcher_options(args)
    load_plugins(args.imports)
    experiment = load_experiment(args.experiment, args.sets)
    if not args.check:
        return run_experiment(
            experiment,
            args.results,
            shard=args.shard,
            force=args.force,
            jobs=args.jobs,
            update_reference=args.update_reference,
            report=not args.no_report,
            progress=not args.quiet,
            decode=args.decode,
            launcher=slurm_launcher(args, experiment, argv) if args.launcher == "slurm" else None,
            collect=not args.no_wait,
        )
    all_cells, cells = grid_cells(experiment, args.shard)
    exp_dir = experiment_dir(args.results, experiment.name)
    if not print_preflight(experiment, cells, decode=args.decode):
        return EXIT_USER_ERROR
    check_cell_records(exp_dir)  # every cell's records read back, not only this grid's or shard's
    print(
        f"ok: {describe(experiment, all_cells)}"
        + (f"; shard {args.shard}: {len(cells)} cells" if args.shard else "")
    )
    for cell in cells:
        status = cell_paths(exp_dir, cell.cell_id).status_value() or CellStatus.PENDING
        print(f"  {cell.cell_id}  [{status}]")
    return 0


def grid_cells(experiment: Experiment, shard: str | None) -> tuple[list[CellConfig], list[CellConfig]]:
    """The grid's cells, and those of shard ``I/N`` (all of them without a shard)."""
    cells = expand_cells(experiment)
    if not shard:
        return cells, cells
    index, count = parse_shard(shard)
    return cells, shard_cells(cells, index, count)


def run_experiment(
    experiment: Experiment,
    results: str | Path = "results",
    *,
    shard: str | None = None,
    force: bool = False,
    jobs: int | None = None,
    update_reference: bool = False,
    report: bool = True,
    progress: bool = True,
    decode: bool = False,
    launcher: Launcher | None = None,
    collect: bool = True,
) -> int:
    """The runner: train the cells of ``experiment`` (shard ``I/N``) not yet finished into
    ``results/<name>/``, then write cells.csv, the summary and (once every cell is done) the report.

    What ``python -m harness.run FILE`` does after its options; returns the exit code (0, or
    :data:`EXIT_FAILED_CELLS`). Ctrl-C or SIGTERM stops it with :class:`~harness.stopping.Interrupted`
    once the running cells are stopped (each keeps its checkpoint). ``decode``: decode every listed image
    first (as ``--decode``). ``launcher`` trains the cells elsewhere (``--launcher slurm``); with
    ``collect=False`` it returns once they are submitted, before the summary.
    """
    all_cells, cells = grid_cells(experiment, shard)
    exp_dir = experiment_dir(results, experiment.name)
    require_preflight(experiment, cells, decode=decode)
    check_destination(exp_dir, update_reference)

    ctx = init_from_env()
    if ctx is not None and jobs and jobs > 1:
        raise UserError(
            f"--jobs {jobs} under torchrun: torchrun already trains each cell on several "
            "processes; drop --jobs, or run without torchrun"
        )
    if ctx is not None and launcher is not None:
        raise UserError("--launcher slurm under torchrun: submit from a plain python -m harness.run")
    main_rank = ctx is None or ctx.is_main
    try:
        if main_rank:
            with folder_lock(exp_dir):
                clean_leftovers(exp_dir)
                record_experiment(exp_dir, experiment, all_cells)
            print(describe(experiment, all_cells), file=sys.stderr, flush=True)
        with StopSignals().installed() as signals:
            outcomes, skipped = run_cells(
                cells,
                exp_dir,
                force=force,
                jobs=jobs,
                progress=progress,
                ctx=ctx,
                signals=signals,
                launcher=launcher,
            )
            signals.check()  # a signal that came after the last cell's training
    finally:
        shutdown(ctx)
    if not collect and skipped < len(cells):  # submitted: the collect command reports
        return 0
    failed = [
        (r.cell_id, r.reason or "unknown")
        for r in outcomes
        if r.status not in (CellStatus.FINISHED, CellStatus.BUSY, CellStatus.DONE_ELSEWHERE)
    ]
    if not main_rank:
        return EXIT_FAILED_CELLS if failed else 0
    if update_reference:  # a committed reference keeps what the reports read, pair weights aggregated
        with folder_lock(exp_dir):
            aggregate_reference(exp_dir)
    summarise(exp_dir, all_cells, outcomes, skipped, write_report=report)
    if failed:
        print("failed cells:", file=sys.stderr)
        for cell_id, reason in failed:
            print(f"  {cell_id}: {reason}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0


def check_launcher_options(args: argparse.Namespace) -> None:
    """The options that go with --launcher slurm (and Slurm itself, when it is asked for)."""
    if args.launcher != "slurm":
        if args.no_wait:
            raise UserError("--no-wait: only with --launcher slurm (a local run trains in this process)")
        return
    if args.jobs is not None:
        raise UserError(
            f"--jobs {args.jobs} with --launcher slurm: each cell is its own Slurm job; limit how many "
            "run at once with --set cluster.max_running=N"
        )
    if not args.check:
        require_slurm()


def slurm_launcher(args: argparse.Namespace, experiment: Experiment, argv: list[str] | None) -> Launcher:
    """The Slurm launcher for this run (the experiment's cluster: section), and the command that collects."""
    from harness.cluster.launcher import SlurmLauncher, collect_command

    return SlurmLauncher.for_experiment(
        experiment,
        len(grid_cells(experiment, args.shard)[1]),
        wait=not args.no_wait,
        progress=not args.quiet,
        collect_command=collect_command("harness.run", sys.argv[1:] if argv is None else argv),
    )


def run_cells(
    cells: list[CellConfig],
    exp_dir: Path,
    *,
    force: bool = False,
    jobs: int | None = None,
    progress: bool = True,
    ctx: DistContext | None = None,
    signals: StopSignals | None = None,
    launcher: Launcher | None = None,
) -> tuple[list[CellOutcome], int]:
    """Train every cell not yet finished, ``jobs`` at once (or with ``launcher``, which shows its own
    progress); returns (each trained cell's result, cells skipped)."""
    from harness.builders import load_splits

    main = ctx is None or ctx.is_main
    todo = [c for c in cells if force or cell_paths(exp_dir, c.cell_id).status_value() != CellStatus.FINISHED]
    for cell in todo:  # missing data stops the run here, before any training, with one line
        load_splits(cell)
    width = min(jobs or default_jobs(todo), len(todo))
    tasks = [
        CellTask(cell, exp_dir, f"{number}/{len(todo)}", force, final_mtime(exp_dir, cell.cell_id), progress)
        for number, cell in enumerate(todo, 1)
    ]
    overall = CellsProgress(len(tasks), enabled=progress and main and width > 1 and launcher is None)
    outcomes: list[CellOutcome] = []
    try:
        for result in (launcher or make_launcher(width, ctx, signals)).run(tasks):
            outcomes.append(result)
            overall.update(result)
            if result.status == CellStatus.FAILED and main and (width <= 1 or launcher is not None):
                print(f"cell {result.cell_id} failed: {result.reason}", file=sys.stderr, flush=True)
    finally:
        overall.close()
    return outcomes, len(cells) - len(todo)


def summarise(
    exp_dir: Path,
    all_cells: list[CellConfig],
    outcomes: list[CellOutcome],
    skipped: int,
    *,
    write_report: bool,
) -> None:
    """Under the folder lock: cells.csv, the summary line and (when every cell of the grid is done) the
    report."""
    counts = Counter(result.status for result in outcomes)
    with folder_lock(exp_dir):
        table = write_cells_table(exp_dir)
        pending = [c.cell_id for c in all_cells if cell_paths(exp_dir, c.cell_id).status_value() not in ENDED]
        finished, busy, elsewhere = (
            counts[s] for s in (CellStatus.FINISHED, CellStatus.BUSY, CellStatus.DONE_ELSEWHERE)
        )
        held = f"; {busy} cells are being trained by another run" if busy else ""
        print(
            f"{finished} cells finished, {skipped + elsewhere} already finished (skipped), "
            f"{len(outcomes) - finished - busy - elsewhere} failed{held}; table: {table}",
            file=sys.stderr,
        )
        stale = stale_cells_note(exp_dir)
        if stale:
            print(f"stale: {stale}", file=sys.stderr)
        if not write_report:
            return
        if pending:
            print(
                f"report not written: {len(pending)} cells not finished yet (other shards or runs?); "
                f"when they are: python -m harness.report {exp_dir}",
                file=sys.stderr,
            )
            return
        from harness.report import write_report as write

        print(f"report: {write(exp_dir)}", file=sys.stderr)


if __name__ == "__main__":
    cli_main(main)
