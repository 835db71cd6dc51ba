"""``python -m harness.run FILE``: run an experiment grid, cell by cell, into ``results/<experiment>/``.

Finished cells are skipped on a re-run (``--force`` re-runs them), an interrupted cell resumes from
its last checkpoint, ``--shard i/n`` runs a deterministic subset so several processes or machines can
share one experiment, and ``torchrun`` runs each cell data-parallel. A cell whose loss or gradient
becomes non-finite is recorded as failed and the grid goes on; the command then exits 1 with a summary.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import yaml

from harness.config import CellConfig, Experiment, expand_cells, load_experiment, parse_shard, shard_cells
from harness.distributed import DistContext, init_from_env, shutdown
from harness.errors import UserError, cli_main
from harness.results import (
    atomic_write_json,
    atomic_write_text,
    cell_paths,
    experiment_dir,
    now,
    write_cells_table,
)

EXIT_FAILED_CELLS = 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.run", description="Run an experiment grid (losses x datasets x sizes x seeds)."
    )
    parser.add_argument("experiment", help="experiment YAML file, e.g. experiments/glyphs-ablation.yaml")
    parser.add_argument("--check", action="store_true", help="validate the file and list the grid, run nothing")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set train.iterations=100 (repeatable)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="re-run cells that already finished")
    parser.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (0-based)")
    parser.add_argument("--results", default="results", help="results root folder (default: results)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def describe(experiment: Experiment, cells: list[CellConfig]) -> str:
    """A short summary of the grid."""
    g = experiment.grid
    sizes = g.embedding_sizes if isinstance(g.embedding_sizes, list) else dict(g.embedding_sizes)
    return (
        f"{experiment.name}: {len(cells)} cells = {len(g.losses)} losses x datasets {g.datasets} x "
        f"sizes {sizes} x variants {list(g.variants)} x seeds {g.seeds}"
    )


def _record_crash(cell: CellConfig, exp_dir: Path, err: BaseException) -> str:
    paths = cell_paths(exp_dir, cell.cell_id)
    reason = f"{type(err).__name__}: {err}"
    atomic_write_json(paths.status, {"status": "failed", "reason": reason, "finished": now(),
                                     "traceback": traceback.format_exc()})  # fmt: skip
    atomic_write_json(paths.final, {"cell_id": cell.cell_id, "status": "failed", "reason": reason,
                                    "metrics": {}, "finished": now()})  # fmt: skip
    return reason


def run_cells(
    cells: list[CellConfig],
    exp_dir: Path,
    *,
    force: bool = False,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Train every cell not yet finished; returns (finished, skipped, failed with reasons)."""
    from harness.builders import load_splits
    from harness.train import train_cell

    main = ctx is None or ctx.is_main
    todo = [c for c in cells if force or cell_paths(exp_dir, c.cell_id).status_value() != "finished"]
    skipped = [c.cell_id for c in cells if c not in todo]
    for cell in todo:  # missing data stops the run here, before any training, with one line
        load_splits(cell)
    finished: list[str] = []
    failed: list[tuple[str, str]] = []
    for number, cell in enumerate(todo, 1):
        paths = cell_paths(exp_dir, cell.cell_id)
        if force and main:
            paths.checkpoint.unlink(missing_ok=True)
        if progress and main:
            print(f"[{number}/{len(todo)}] {cell.cell_id}", file=sys.stderr, flush=True)
        try:
            outcome = train_cell(cell, paths, progress=progress, ctx=ctx)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # a crash in one cell must not lose the others
            reason = _record_crash(cell, exp_dir, err) if main else str(err)
            failed.append((cell.cell_id, reason))
            print(f"cell {cell.cell_id} failed: {reason}", file=sys.stderr, flush=True)
            continue
        if outcome.status == "finished":
            finished.append(cell.cell_id)
        else:
            failed.append((cell.cell_id, outcome.reason or "unknown"))
            if main:
                print(f"cell {cell.cell_id} failed: {outcome.reason}", file=sys.stderr, flush=True)
    return finished, skipped, failed


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.run``."""
    args = build_parser().parse_args(argv)
    experiment = load_experiment(args.experiment, args.sets)
    cells = expand_cells(experiment)
    all_cells = cells
    if args.shard:
        index, count = parse_shard(args.shard)
        cells = shard_cells(cells, index, count)
    exp_dir = experiment_dir(args.results, experiment.name)
    if args.check:
        print(f"ok: {describe(experiment, all_cells)}" + (f"; shard {args.shard}: {len(cells)} cells" if args.shard else ""))
        for cell in cells:
            status = cell_paths(exp_dir, cell.cell_id).status_value() or "pending"
            print(f"  {cell.cell_id}  [{status}]")
        return 0

    ctx = init_from_env()
    main_rank = ctx is None or ctx.is_main
    try:
        if main_rank:
            exp_dir.mkdir(parents=True, exist_ok=True)
            resolved = experiment.model_dump(mode="json")
            atomic_write_text(exp_dir / "experiment.yaml", yaml.safe_dump(resolved, sort_keys=False))
            print(describe(experiment, all_cells), file=sys.stderr, flush=True)
        finished, skipped, failed = run_cells(cells, exp_dir, force=args.force, progress=not args.quiet, ctx=ctx)
    finally:
        shutdown(ctx)
    if not main_rank:
        return EXIT_FAILED_CELLS if failed else 0

    table = write_cells_table(exp_dir)
    pending = [c.cell_id for c in all_cells if cell_paths(exp_dir, c.cell_id).status_value() != "finished"]
    print(f"{len(finished)} cells finished, {len(skipped)} already finished (skipped), {len(failed)} failed; "
          f"table: {table}", file=sys.stderr)  # fmt: skip
    if not args.no_report:
        _report(exp_dir, pending, failed)
    if failed:
        print("failed cells:", file=sys.stderr)
        for cell_id, reason in failed:
            print(f"  {cell_id}: {reason}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0


def _report(exp_dir: Path, pending: list[str], failed: list[tuple[str, str]]) -> None:
    failed_ids = {cell_id for cell_id, _ in failed}
    waiting = [c for c in pending if c not in failed_ids]
    if waiting:
        print(f"report not written: {len(waiting)} cells not finished yet (other shards?); "
              f"when they are: python -m harness.report {exp_dir}", file=sys.stderr)  # fmt: skip
        return
    from harness.report import write_report

    path = write_report(exp_dir)
    print(f"report: {path}", file=sys.stderr)


if __name__ == "__main__":
    cli_main(main)
