"""Calibration of a glyphs protocol from finished run folders: plateau, paired SD, seeds, CPU per cell.

Reads the cells of one or more experiment folders (``<results>/<experiment>/cells/*``: config.json,
evals.csv, final.json (its timings hold the cell's ``cpu_seconds``) and, for the calibration runs, cpu.json
holding ``cpu_seconds`` and
``eval_cpu_seconds``, the process CPU time, user + sys, of the cell and of its evaluations) and prints
a Markdown table per folder:

- plateau: gain of the seed-mean validation Recall@1 over the last quarter of training (the highest
  mean at an evaluation in the last quarter minus the mean at 3/4 of the iterations, interpolated),
  and the number of evaluations the checkpoint is selected among;
- power: per Table 2 row, the SD over seeds of the paired difference (reference loss - row) of test
  Recall@1 at the selected checkpoint; seeds needed to detect ``--difference`` points with
  ``--power`` at level ``alpha / comparisons`` (Bonferroni, the first step of Holm), and the minimum
  detectable difference at ``--seeds``;
- cost: CPU seconds per cell (training and evaluation) and an idle estimate from ``--idle-images-per-s``.

Figures (``--figures DIR``): ``calibration_curves.png`` (mean validation Recall@1 per loss against
iterations, one panel per folder) and ``calibration_paired.png`` (per-seed paired differences of the
folder with the most cells).

    python benchmarks/glyphs_calibration.py RUN_DIR [RUN_DIR ...] --figures docs/figures --seeds 10
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness.errors import ArgumentParser
from harness.files import read_json_if_exists
from harness.records import CellStatus
from harness.report.tables import markdown_table, num
from harness.results import CellPaths
from harness.stats import detectable_difference, seeds_needed

SELECT_METRIC = "recall@1"


@dataclass(frozen=True)
class RunProtocol:
    """What one run folder trained: the settings that shape its learning curves."""

    name: str
    iterations: int
    eval_every: int
    milestones: tuple[int, ...]
    gamma: float
    lr: float
    width: int
    image_size: int
    batch: int

    def describe(self) -> str:
        """One line for tables and figure titles."""
        return (
            f"{self.name}: {self.iterations} it, lr {self.lr:g} x{self.gamma:g} at {list(self.milestones)}, "
            f"eval every {self.eval_every}, width {self.width}, {self.image_size} px, batch {self.batch}"
        )


def _read_json(path: Path) -> dict:
    return read_json_if_exists(path) or {}


def _seconds(value: float | None) -> float:
    """A timing of final.json, NaN where the record lacks it."""
    return math.nan if value is None else value


def loss_order(run_dir: Path) -> list[str]:
    """The grid's loss names in the experiment's order (Table 2's rows for glyphs-ablation)."""
    experiment = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    return [loss if isinstance(loss, str) else loss["name"] for loss in experiment["grid"]["losses"]]


def load_runs(run_dir: Path) -> tuple[RunProtocol, pd.DataFrame, pd.DataFrame]:
    """The protocol, the validation curves (loss, seed, iteration, value) and one row per finished cell."""
    curves, cells, configs = [], [], []
    for cell_dir in sorted((run_dir / "cells").iterdir()):
        final = CellPaths(cell_dir).read_final()
        if final is None or final.status != CellStatus.FINISHED or final.timings is None:
            continue
        config = _read_json(cell_dir / "config.json")
        configs.append(config)
        loss, seed = config["loss"]["name"], config["seed"]
        evals = pd.read_csv(cell_dir / "evals.csv")
        curve = evals[(evals["split"] == "val") & (evals["metric"] == SELECT_METRIC)]
        curves.append(curve.assign(loss=loss, seed=seed)[["loss", "seed", "iteration", "value"]])
        cpu = _read_json(cell_dir / "cpu.json")
        cells.append(
            {
                "loss": loss,
                "seed": seed,
                "test": 100 * final.metrics["selected"]["test"][SELECT_METRIC],
                "selected_iteration": final.selected_iteration,
                "wall_seconds": _seconds(final.timings.train_seconds)
                + _seconds(final.timings.final_eval_seconds),
                # the trainer records the cell's CPU time in final.json; cpu.json is the calibration runs'
                # wrapper
                "cpu_seconds": cpu.get("cpu_seconds", _seconds(final.timings.cpu_seconds)),
                "eval_cpu_seconds": cpu.get("eval_cpu_seconds", math.nan),
            }
        )
    if not cells:
        raise SystemExit(f"{run_dir}: no finished cells under {run_dir / 'cells'}")
    order = loss_order(run_dir)

    def in_grid_order(frame: pd.DataFrame) -> pd.DataFrame:
        key = frame["loss"].map(order.index)
        return frame.assign(_order=key).sort_values(["_order", "seed"], kind="stable").drop(columns="_order")

    first = configs[0]
    protocol = RunProtocol(
        name=run_dir.name,
        iterations=first["train"]["iterations"],
        eval_every=first["train"]["eval_every"],
        milestones=tuple(first["schedule"]["milestones"]),
        gamma=first["schedule"]["gamma"],
        lr=first["optim"]["lr_backbone"],
        width=first["model"]["width"],
        image_size=first["data"]["image_size"],
        batch=first["data"]["classes_per_batch"] * first["data"]["samples_per_class"],
    )
    curves_table = in_grid_order(pd.concat(curves, ignore_index=True)).reset_index(drop=True)
    return protocol, curves_table, in_grid_order(pd.DataFrame(cells)).reset_index(drop=True)


def plateau_gain(mean_curve: pd.Series, iterations: int) -> float:
    """Points gained by a mean curve (index: iteration, values in [0, 1]) over the last quarter."""
    start = 0.75 * iterations
    at_start = float(np.interp(start, mean_curve.index.to_numpy(), mean_curve.to_numpy()))
    last_quarter = mean_curve[mean_curve.index >= start]
    return 100 * (float(last_quarter.max()) - at_start)


def mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean validation Recall@1 (rows: iteration, columns: loss) over the iterations every seed has."""
    wide = curves.pivot_table(index="iteration", columns=["loss", "seed"], values="value")
    return wide.dropna().T.groupby(level="loss").mean().T


def paired_differences(cells: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per seed (rows) and row (columns): reference loss minus that row, test Recall@1 points."""
    wide = cells.pivot_table(index="seed", columns="loss", values="test")
    others = [loss for loss in cells["loss"].unique() if loss != reference]
    if reference not in wide:
        return pd.DataFrame(index=wide.index, columns=others, dtype=float)
    return wide[others].rsub(wide[reference], axis=0)  # NaN where a seed lacks either cell


def summary_table(
    protocol: RunProtocol, curves: pd.DataFrame, cells: pd.DataFrame, reference: str
) -> pd.DataFrame:
    """One row per loss: seeds, evaluations, plateau gain, selected iterations, test R@1, paired SD."""
    means = mean_curves(curves)
    differences = paired_differences(cells, reference)
    rows = []
    for loss, group in cells.groupby("loss", sort=False):
        rows.append(
            {
                "loss": loss,
                "seeds": len(group),
                "evaluations": int(curves[(curves["loss"] == loss)].groupby("seed").size().min()),
                "plateau gain (pts)": plateau_gain(means[loss], protocol.iterations),
                "selected iterations": " ".join(str(int(i)) for i in sorted(group["selected_iteration"])),
                "test R@1 mean": group["test"].mean(),
                "test R@1 SD": group["test"].std(ddof=1),
                f"paired SD vs {reference}": differences[loss].std(ddof=1)
                if loss in differences
                else math.nan,
            }
        )
    return pd.DataFrame(rows).set_index("loss")


def power_lines(differences: pd.DataFrame, args: argparse.Namespace) -> list[str]:
    """Seeds needed and minimum detectable difference at the mean, pooled and largest paired SD."""
    sds = differences.std(ddof=1)
    design = {
        "alpha": args.alpha,
        "power": args.power,
        "comparisons": args.comparisons or differences.shape[1],
    }
    lines = []
    for label, sd in (("mean", sds.mean()), ("pooled", math.sqrt((sds**2).mean())), ("largest", sds.max())):
        needed = seeds_needed(args.difference, sd, **design)
        line = f"- paired SD {label} {sd:.2f} pts: {needed} seeds for {args.difference:g} pts"
        if args.seeds:
            line += f"; with {args.seeds} seeds the minimum detectable difference is "
            line += f"{detectable_difference(sd, args.seeds, **design):.2f} pts"
        lines.append(line)
    return lines


def cost_lines(protocol: RunProtocol, cells: pd.DataFrame, idle_images_per_s: float | None) -> list[str]:
    """CPU seconds per cell as measured (loaded machine) and, given the idle throughput, the idle estimate."""
    wall = cells["wall_seconds"]
    wall_line = f"- wall per cell (training and evaluation, load-dependent): {wall.mean():.1f} s mean"
    cpu = cells["cpu_seconds"].dropna()
    if cpu.empty:
        return [wall_line, "- CPU per cell: not recorded (no cpu.json, no cpu_seconds in final.json)"]
    evaluation = cells["eval_cpu_seconds"].dropna()
    images = protocol.iterations * protocol.batch
    lines = [
        wall_line,
        f"- CPU per cell (loaded machine): {cpu.mean():.1f} s mean ({cpu.min():.1f}-{cpu.max():.1f}), "
        f"of which evaluation {evaluation.mean():.1f} s; {images:,} training images per cell",
    ]
    if idle_images_per_s:
        share = float((cpu - evaluation.reindex(cpu.index).fillna(0)).mean() / cpu.mean())
        idle = images / idle_images_per_s / share
        lines.append(
            f"- idle estimate: {images / idle_images_per_s:.1f} s training at {idle_images_per_s:,.0f} "
            f"images/s, {idle:.1f} core-s per cell with evaluation in its measured share "
            f"({1 - share:.0%})"
        )
    return lines


def plot(
    results: list[tuple[RunProtocol, pd.DataFrame, pd.DataFrame]], reference: str, out_dir: Path
) -> list[Path]:
    """calibration_curves.png and calibration_paired.png under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    losses = pd.unique(pd.concat([curves["loss"] for _, curves, _ in results]))
    colors = {loss: f"C{number % 10}" for number, loss in enumerate(losses)}
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (protocol, curves, _) in zip(axes[0], results, strict=True):
        means = 100 * mean_curves(curves)
        for loss in curves["loss"].unique():
            ax.plot(means.index, means[loss], marker=".", label=loss, color=colors[loss])
        ax.axvspan(
            0.75 * protocol.iterations, protocol.iterations, color="grey", alpha=0.15, label="last quarter"
        )
        for milestone in protocol.milestones:
            ax.axvline(milestone, color="grey", linestyle=":", linewidth=1)
        seeds = curves.groupby("loss")["seed"].nunique().min()
        ax.set(
            title=f"{protocol.name}: width {protocol.width}, "
            f"lr steps at {list(protocol.milestones)}, {seeds}+ seeds",
            xlabel="iteration",
            ylabel="validation Recall@1 % (mean)",
        )
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    curves_path = out_dir / "calibration_curves.png"
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)

    protocol, _, cells = max(reversed(results), key=lambda result: len(result[2]))  # fullest, latest on ties
    differences = paired_differences(cells, reference)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for position, loss in enumerate(differences.columns):
        values = differences[loss]
        ax.scatter(np.full(len(values), position), values, color="C0", alpha=0.7)
        ax.errorbar(position + 0.2, values.mean(), yerr=values.std(ddof=1), fmt="o", color="C3", capsize=3)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(differences.columns)), differences.columns, rotation=30, fontsize=8)
    ax.set(
        title=f"{protocol.name}: {reference} - row, test Recall@1 (dots: seeds; red: mean ± SD)",
        ylabel="points",
    )
    ax.title.set_fontsize(9)
    fig.tight_layout()
    paired_path = out_dir / "calibration_paired.png"
    fig.savefig(paired_path, dpi=110)
    plt.close(fig)
    return [curves_path, paired_path]


def main() -> None:
    """Command line: print the tables, write the figures."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="experiment folders (with cells/); last = chosen"
    )
    parser.add_argument("--reference", default="ms", help="the loss every other row is compared with")
    parser.add_argument("--difference", type=float, default=2.0, help="difference to detect, points")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--comparisons", type=int, default=None, help="planned comparisons (default: the rows in the folder)"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="design to report the detectable difference of"
    )
    parser.add_argument("--idle-images-per-s", type=float, default=None, help="idle training throughput")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNG figures")
    args = parser.parse_args()

    results = [load_runs(run_dir) for run_dir in args.run_dirs]
    for protocol, curves, cells in results:
        print(f"\n### {protocol.describe()}\n")
        table = summary_table(protocol, curves, cells, args.reference)
        rows = [
            [loss, *(num(v) if isinstance(v, float) else v for v in row)] for loss, row in table.iterrows()
        ]
        print(markdown_table(["loss", *table.columns], rows))
        print()
        differences = paired_differences(cells, args.reference)
        if differences.shape[1] and differences.count().min() >= 2:
            print("\n".join(power_lines(differences, args)))
        print("\n".join(cost_lines(protocol, cells, args.idle_images_per_s)))
    if args.figures:
        for path in plot(results, args.reference, args.figures):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
