"""The report's framing sections (runs, checkpoint selection, other methods, appendix) and write_report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.files import atomic_write_text
from harness.records import ENDED, CellStatus
from harness.report.decisions import (
    between_losses_section,
    blocks,
    default_reference,
    lead_section,
    reference_section,
)
from harness.report.figures import figures_section, report_figures
from harness.report.reading import (
    DATASET_NAMES,
    DEFAULT_MARGIN,
    PAPER_DIR,
    REFERENCE_ROOT,
    WEIGHTS_ORDER,
    CellFiles,
    ReportContext,
    ReportOptions,
    load_paper_tables,
    paper_reference,
    read_cell_files,
    read_cells,
    row_order,
    table_loss_order,
)
from harness.report.tables import (
    comparison,
    datasets,
    esc,
    markdown_table,
    num,
    other_metrics_section,
    paper_section,
)


def weights_coincide(finished: pd.DataFrame) -> bool:
    """Whether every finished cell has selected and final results and they are the same in every metric."""
    if finished.empty:
        return False
    wide = finished.pivot_table(
        index=["cell_id", "split", "metric"], columns="weights", values="value", aggfunc="first"
    )
    if not set(WEIGHTS_ORDER) <= set(wide.columns):
        return False
    pairs = wide[list(WEIGHTS_ORDER)]
    return bool(pairs.notna().all().all() and (pairs["selected"] == pairs["final"]).all())


def _selection_words(
    cells: pd.DataFrame, finals: dict[str, dict], *, coincide: bool
) -> tuple[dict[str, str], str]:
    """Titles for the two kinds of weights, and the report's paragraph on checkpoint selection."""
    per_cell = cells.drop_duplicates("cell_id").set_index("cell_id")["select_on"]
    splits = sorted(set(per_cell))
    metrics = sorted({str(f.get("select_metric")) for f in finals.values() if f.get("select_metric")}) or [
        "recall@1"
    ]
    metric = "/".join(metrics)
    where = {"val": "the validation split", "test": "the test split"}
    if splits == ["final"]:
        selected = "final weights (train.select_on: final, no selection)"
    elif splits == ["val"]:
        selected = f"validation-selected weights (best {metric} on val)"
    elif splits == ["test"]:
        selected = f"test-selected weights (best {metric} on test: optimistic)"
    else:
        by_variant = (
            cells.drop_duplicates("cell_id")
            .groupby("variant")["select_on"]
            .agg(lambda s: "/".join(sorted(set(s))))
        )
        selected = (
            f"selected weights (best {metric} on the split each variant selects on: "
            + "; ".join(
                f"{esc(v)} on {s}" if s != "final" else f"{esc(v)} none (final weights)"
                for v, s in by_variant.items()
            )
            + ")"
        )
    chosen = " / ".join(where[s] for s in splits if s in where)
    rules = [f"the checkpoint with the best {metric} on {chosen} during training"] if chosen else []
    rules += ["the final weights where `select_on` is `final` (no selection)"] if "final" in splits else []
    lines = [
        f"- Checkpoint selection (`select_on`): {', '.join(f'`{s}` ({(per_cell == s).sum()} cells)' for s in splits)}.",
        f"- **selected** weights: {' or '.join(rules)}; **final** weights: the last iteration.",
        "- Every result table is on the **test set** and says which weights it shows; "
        + (
            "**in every finished cell the selected checkpoint gives the same results as the final weights**, so "
            "each table and figure is shown once, for both."
            if coincide
            else "both are reported."
        ),
    ]
    if "test" in splits:
        lines.append(
            "- Selecting on the test split (as the paper's official code does) makes the *selected* test "
            "numbers optimistic; the *final* weights are not selected on test data."
        )
    if coincide:
        return {
            "final": "selected = final weights (the selected checkpoint is the last one in every cell)"
        }, "\n".join(lines)
    return {"selected": selected, "final": "final weights (last iteration)"}, "\n".join(lines)


def _runs_section(ctx: ReportContext) -> str:
    per_cell = ctx.cells.drop_duplicates("cell_id")
    counts = per_cell["status"].value_counts()
    lines = ["## Runs", ""]
    lines.append(f"- cells: {len(per_cell)} ({', '.join(f'{s}: {n}' for s, n in counts.items())})")
    for column, name in (
        ("dataset", "datasets"),
        ("embedding_size", "embedding sizes"),
        ("row", "losses"),
        ("seed", "seeds"),
        ("preset", "presets"),
        ("variant", "variants"),
    ):
        values = [v for v in per_cell[column].drop_duplicates().tolist() if v != ""]
        if column == "row":
            values = ctx.ordered(values)
        lines.append(f"- {name}: {', '.join(esc(v) for v in values) or '–'}")
    from harness.results import stale_cells_note

    stale = stale_cells_note(ctx.exp_dir)
    if stale:
        lines.append(f"- stale: {esc(stale)}")
    not_done = per_cell[~per_cell["status"].isin(ENDED)]
    if len(not_done):
        lines.append(
            f"- {len(not_done)} cell(s) not finished ({', '.join(sorted(set(not_done['status'])))}): "
            "not in the statistics; rerun the report when they are done."
        )
    dupes = ctx.finished.duplicated(
        ["row", "dataset", "embedding_size", "variant", "seed", "weights", "split", "metric"]
    ).sum()
    if dupes:
        lines.append(
            f"- {dupes} result(s) repeat a (loss, dataset, size, variant, seed): they count as extra runs "
            "in the per-cell statistics and are averaged per seed in the paired tests."
        )
    failed = per_cell[per_cell["status"] == CellStatus.FAILED]
    if len(failed):
        rows = [
            [
                esc(r.cell_id),
                esc(r.row),
                r.dataset,
                r.embedding_size,
                r.seed,
                esc(ctx.files.finals.get(r.cell_id, {}).get("reason") or "–"),
            ]
            for r in failed.itertuples()
        ]
        lines += [
            "",
            "Failed cells (not in the statistics):",
            "",
            markdown_table(["cell", "loss", "dataset", "size", "seed", "reason"], rows),
        ]
    for name, where in ctx.files.problems.items():
        more = f" and {len(where) - 6} more" if len(where) > 6 else ""
        lines.append(
            f"- `{name}` missing or unreadable in {len(where)} finished cell(s), left out of the figures: "
            + ", ".join(esc(w) for w in where[:6])
            + more
        )
    return "\n".join(lines)


def _other_methods_section(ctx: ReportContext) -> str:
    present = set(ctx.cells["dataset"])
    others = ctx.paper[~ctx.paper["implemented"].astype(bool) & ctx.paper["dataset"].isin(present)]
    if others.empty:
        return ""
    lines = [
        "## The paper's other methods (not implemented here)",
        "",
        "For context: the other rows of the paper's Tables 3-5 on the datasets of this experiment (Recall@K, %).",
    ]
    for dataset in datasets(others):
        part = others[others["dataset"] == dataset]
        ks = sorted(set(part["k"]))
        wide = part.pivot_table(
            index=["table", "method", "embedding_size"], columns="k", values="recall", sort=False
        )
        rows = [[f"T{t}", esc(m), s, *(num(v, 1) for v in wide.loc[(t, m, s), ks])] for t, m, s in wide.index]
        lines += [
            "",
            f"**{DATASET_NAMES.get(dataset, dataset)}**",
            "",
            markdown_table(["table", "method", "size", *(f"R@{k}" for k in ks)], rows),
        ]
    return "\n".join(lines)


def _appendix(ctx: ReportContext) -> str:
    per_cell = ctx.cells.drop_duplicates("cell_id").sort_values(["dataset", "embedding_size", "row", "seed"])
    rows = []
    for r in per_cell.itertuples():
        final = ctx.files.finals.get(r.cell_id, {})
        rows.append(
            [
                esc(r.cell_id),
                r.status,
                r.select_on,
                esc(final.get("select_metric") or "–"),
                final.get("selected_iteration") if final.get("selected_iteration") is not None else "–",
                final.get("iterations", "–"),
            ]
        )
    return "\n".join(
        [
            "## Appendix: checkpoint selection per cell",
            "",
            markdown_table(
                ["cell", "status", "select_on", "select metric", "selected iteration", "iterations"], rows
            ),
        ]
    )


def load_context(
    experiment_dir: Path, paper_dir: Path | None = None, options: ReportOptions | None = None
) -> tuple[ReportContext, str]:
    """Everything the report needs from disk, and its paragraph on checkpoint selection."""
    exp_dir = Path(experiment_dir)
    cells = read_cells(exp_dir)
    if paper_dir is not None and not Path(paper_dir).is_dir():
        raise UserError(
            f"{paper_dir}: no such directory; expected the paper's tables (table2.csv ..., as harness/paper/)"
        )
    paper = load_paper_tables(Path(paper_dir) if paper_dir is not None else PAPER_DIR)
    paper_note = (
        ""
        if len(paper)
        else (
            f"The paper's tables were not found in {paper_dir or PAPER_DIR}: the paper "
            "columns are empty (pass --paper DIR)."
        )
    )
    finished = cells[
        (cells["status"] == CellStatus.FINISHED) & cells["value"].notna() & (cells["metric"] != "")
    ]
    files: CellFiles = read_cell_files(exp_dir, cells)
    coincide = weights_coincide(finished)
    if coincide:
        finished = finished[finished["weights"] == "final"]
    weights_titles, selection_text = _selection_words(cells, files.finals, coincide=coincide)
    ctx = ReportContext(
        exp_dir=exp_dir,
        cells=cells,
        finished=finished,
        reference=paper_reference(paper),
        paper=paper,
        paper_note=paper_note,
        files=files,
        order=row_order(cells, table_loss_order(paper)),
        weights_titles=weights_titles,
        many_variants=cells["variant"].nunique() > 1,
        coincide=coincide,
        options=options or ReportOptions(),
    )
    return ctx, selection_text


def _reference_dir(exp_dir: Path, cells: pd.DataFrame, reference: Path | bool | None) -> Path | None:
    """The reference run to compare with: an explicit folder (must hold cells.csv), none (False), or the
    default ``results/reference/<experiment>/`` of the checkout when it exists and is not ``exp_dir``."""
    if reference is False:
        return None
    if reference is None or reference is True:
        experiment = (sorted(set(cells["experiment"]) - {""}) or [exp_dir.name])[0]
        return default_reference(exp_dir, experiment, REFERENCE_ROOT)
    if not (Path(reference) / "cells.csv").is_file():
        raise UserError(
            f"{reference}: no cells.csv here; expected a reference results folder "
            "(results/reference/<experiment>/), or pass --no-reference"
        )
    return Path(reference)


def write_report(
    experiment_dir: Path,
    *,
    paper_dir: Path | None = None,
    all_pairs: bool = False,
    margin: float = DEFAULT_MARGIN,
    reference: Path | bool | None = None,
) -> Path:
    """Write ``<experiment_dir>/report.md`` and ``<experiment_dir>/figures/``; return the report's path.

    ``paper_dir`` defaults to the package's ``harness/paper/``; when that is absent the report is
    written without the paper's columns (and says so). An explicitly given ``paper_dir`` must exist.
    ``all_pairs``: compare every pair of losses instead of MS against each other loss. ``margin``:
    the equivalence margin (points) of the paper verdicts. ``reference``: the committed reference run
    to check agreement with (None: ``results/reference/<experiment>/`` when it exists; False: none).
    """
    if not margin > 0:
        raise UserError(
            f"--margin {margin}: the equivalence margin must be a positive number of points (e.g. 2)"
        )
    exp_dir = Path(experiment_dir)
    ctx, selection_text = load_context(exp_dir, paper_dir)
    ctx.options = ReportOptions(
        all_pairs=all_pairs, margin=margin, reference_dir=_reference_dir(exp_dir, ctx.cells, reference)
    )
    experiment = ", ".join(sorted(set(ctx.cells["experiment"]) - {""})) or ctx.exp_dir.name
    compared = comparison(ctx) if len(ctx.finished) else pd.DataFrame()
    parts = [
        f"# Report: {esc(experiment)}",
        f"Written by `python -m harness.report` from the stored runs in `{ctx.exp_dir}` (no training). "
        "All values in percent." + (f" {ctx.paper_note}" if ctx.paper_note else ""),
    ]
    if len(ctx.finished):
        all_blocks = blocks(ctx)
        parts += [lead_section(ctx, compared, all_blocks), reference_section(ctx)]
    parts += [_runs_section(ctx), "## Checkpoint selection\n\n" + selection_text]
    if len(ctx.finished):
        figures = report_figures(ctx, compared)
        parts += [
            paper_section(ctx, compared),
            other_metrics_section(ctx, compared),
            between_losses_section(ctx, compared, all_blocks),
            figures_section(ctx, figures),
        ]
    else:
        parts.append("## Results\n\nNo cell has finished with results: no tables and no figures (see Runs).")
    parts += [_other_methods_section(ctx), _appendix(ctx)]
    path = ctx.exp_dir / "report.md"
    atomic_write_text(path, "\n\n".join(p for p in parts if p) + "\n")
    return path
