"""The fair report: per loss, default and tuned test results side by side, the budget used, the decisions,
the ranking."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.fair.schema import FairSetup
from harness.fair.studies import StudyState
from harness.files import atomic_write_text
from harness.records import CellStatus
from harness.report.reading import ORDER_TABLE, load_paper_tables, read_cells
from harness.report.tables import esc, markdown_table, num, p_value
from harness.stats import detectable_difference, holm, planned_comparisons, rank_agreement, t_interval

METRIC, WEIGHTS = "recall@1", "selected"
CONTROL_LOSS = "ms"


def _study_keys(setup: FairSetup, cells: pd.DataFrame) -> list[str | None]:
    """The study key of each row of cells.csv: by loss and preset, by label where those are shared."""
    by_spec: dict[tuple[str, str], list[str]] = {}
    labels: dict[str, str | None] = {}
    for s in setup.studies:
        by_spec.setdefault((s.spec.name, s.spec.preset or ""), []).append(s.key)
        labels[s.key] = s.spec.label
    keys: list[str | None] = []
    for loss, preset, label in zip(
        cells["loss"], cells["preset"].fillna(""), cells["loss_label"], strict=True
    ):
        found = by_spec.get((loss, preset), [])
        keys.append(found[0] if len(found) == 1 else next((k for k in found if labels[k] == label), None))
    return keys


def test_block(exp_dir: Path, setup: FairSetup) -> pd.DataFrame:
    """Seeds x losses (study keys) of test Recall@1 in percent, selected weights, finished cells only."""
    cells = read_cells(exp_dir)
    keep = (cells["split"] == "test") & (cells["metric"] == METRIC) & (cells["weights"] == WEIGHTS)
    cells = cells[keep & (cells["status"] == CellStatus.FINISHED)]
    cells = cells.assign(key=_study_keys(setup, cells)).dropna(subset=["key"])
    block = cells.pivot_table(index="seed", columns="key", values="value", aggfunc="first")
    return block.reindex(columns=[s.key for s in setup.studies])


def _mean_ci(values: pd.Series) -> str:
    data = values.dropna().to_numpy(dtype=float)
    if data.size == 0:
        return "–"
    low, high = t_interval(data)
    return num(float(np.mean(data))) + ("" if math.isnan(low) else f" [{num(low)}, {num(high)}]")


def tuned_vs_default(default: pd.DataFrame, tuned: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per loss: the paired difference tuned - default over common seeds, Holm across the losses."""
    rows = []
    for key in keys:
        pair = pd.DataFrame({"tuned": tuned.get(key), "default": default.get(key)})
        rows.append(planned_comparisons(pair, control="tuned").table.iloc[0].to_dict() | {"key": key})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy(dtype=float))
    table["detectable"] = [
        detectable_difference(sd, int(n), comparisons=len(keys))
        for sd, n in zip(table["sd_diff"], table["n"], strict=True)
    ]
    table["decision"] = [_decision(row) for row in table.to_dict("records")]
    return table


def _decision(row: dict) -> str:
    if row["n"] < 2:
        return f"no test ({int(row['n'])} common seed(s))"
    if row["p_holm"] < 0.05:
        return "tuned better" if row["mean_diff"] > 0 else "default better"
    return f"no difference larger than {num(row['detectable'], 1)} detectable"


def _control(setup: FairSetup) -> str:
    named = [s.key for s in setup.studies if s.spec.name == CONTROL_LOSS]
    return named[0] if named else setup.studies[0].key


def _budget_section(setup: FairSetup, states: list[StudyState]) -> list[str]:
    rows = []
    for state in states:
        defaults = state.study.spec.resolved()["hparams"]
        values = ", ".join(
            f"{name} {state.best_params[name]:.4g} (default {defaults.get(name, '–')})"
            for name in state.study.setup.study.space
            if name in state.best_params
        )
        c = state.counts
        rows.append(
            [
                esc(state.study.key),
                c.get("complete", 0),
                c.get("pruned", 0),
                c.get("fail", 0),
                f"{c['total']} / {setup.fair.trials}",
                num(None if state.default_value is None else 100 * state.default_value),
                num(None if state.best_value is None else 100 * state.best_value),
                values or "no complete trial: default values kept",
            ]
        )
    header = [
        "loss",
        "complete",
        "pruned",
        "failed",
        "used / budget",
        "default val R@1",
        "best val R@1",
        "tuned values",
    ]
    note = (
        "Each study's first trial trains the loss's default values and is never pruned, so the best "
        "validation value is never below the default's."
        if setup.fair.default_first
        else "fair.default_first is off: no study trained the defaults first."
    )
    return ["## Budget and tuned values", "", note, "", markdown_table(header, rows), ""]


def _comparison_section(default: pd.DataFrame, tuned: pd.DataFrame, setup: FairSetup) -> list[str]:
    keys = [s.key for s in setup.studies]
    table = tuned_vs_default(default, tuned, keys).set_index("key")
    rows = [
        [
            esc(k),
            _mean_ci(default[k]),
            _mean_ci(tuned[k]),
            f"{num(table.at[k, 'mean_diff'], sign=True)} [{num(table.at[k, 'ci_low'], sign=True)}, "
            f"{num(table.at[k, 'ci_high'], sign=True)}]",
            p_value(table.at[k, "p_holm"]),
            table.at[k, "decision"],
        ]
        for k in keys
    ]
    header = ["loss", "default", "tuned", "tuned − default [95% CI]", "p (Holm)", "decision"]
    return [
        "## Default and tuned, side by side (test Recall@1, %)",
        "",
        f"Mean over seeds {list(default.index)} with 95% t intervals; paired over seeds, Holm over the "
        f"{len(keys)} losses.",
        "",
        markdown_table(header, rows),
        "",
    ]


def _decisions_section(default: pd.DataFrame, tuned: pd.DataFrame, control: str) -> list[str]:
    if default[control].isna().all() or tuned[control].isna().all():
        return [
            f"## {control} against each other loss",
            "",
            f"No finished {control} cell yet: no comparison.",
            "",
        ]
    before = planned_comparisons(default.dropna(axis=1, how="all"), control=control).table.set_index("b")
    after = planned_comparisons(tuned.dropna(axis=1, how="all"), control=control).table.set_index("b")
    rows = [
        [
            esc(f"{control} − {other}"),
            f"{num(before.at[other, 'mean_diff'], sign=True)}: {before.at[other, 'decision']}",
            f"{num(after.at[other, 'mean_diff'], sign=True)}: {after.at[other, 'decision']}",
        ]
        for other in after.index
        if other in before.index
    ]
    return [
        f"## {control} against each other loss, before and after tuning",
        "",
        "Paired over seeds, Holm over the comparisons of each column; the decision names the better loss or "
        "the smallest difference the design detects with 80% power.",
        "",
        markdown_table(["comparison", "default hyperparameters", "tuned"], rows),
        "",
    ]


def _paper_order(setup: FairSetup) -> pd.Series:
    """Table 2's R@1 per study key (losses the paper has, at their paper preset or none)."""
    paper = load_paper_tables()
    rows = (
        paper[(paper["table"] == ORDER_TABLE) & (paper["k"] == 1)].drop_duplicates("loss").set_index("loss")
    )
    values = {
        s.key: float(rows.at[s.spec.name, "recall"])
        for s in setup.studies
        if s.spec.name in rows.index and s.spec.preset in (None, "paper")
    }
    return pd.Series(values, dtype=float)


def _ranking_section(default: pd.DataFrame, tuned: pd.DataFrame, setup: FairSetup) -> list[str]:
    means_default, means_tuned, paper = default.mean(), tuned.mean(), _paper_order(setup)
    rank_default = means_default.rank(ascending=False)
    rank_tuned = means_tuned.rank(ascending=False)
    rows = [
        [
            esc(s.key),
            num(rank_default.get(s.key, math.nan), 1),
            num(rank_tuned.get(s.key, math.nan), 1),
            num(paper.rank(ascending=False).get(s.key, math.nan), 1),
        ]
        for s in setup.studies
    ]
    pairs = [
        ("default vs tuned", means_default, means_tuned),
        ("default vs paper Table 2", means_default, paper),
        ("tuned vs paper Table 2", means_tuned, paper),
    ]
    lines = [
        "## How the ranking moves",
        "",
        markdown_table(["loss", "rank default", "rank tuned", "rank paper"], rows),
        "",
        "Kendall tau-b (scipy) between the rankings of mean test Recall@1:",
        "",
    ]
    for what, a, b in pairs:
        agreement = rank_agreement(a, b)
        detail = agreement.note or f"tau {num(agreement.tau)}, p {p_value(agreement.p)}"
        lines.append(f"- {what} ({agreement.n} losses): {detail}")
    return [*lines, ""]


def _folds_words(setup: FairSetup) -> str:
    """How the trials validate with class folds ('' without them)."""
    k = setup.fair.folds
    if not k:
        return ""
    return (
        f" and {k} class-disjoint folds of the training classes, each validating a model trained on the "
        "other folds; the re-runs train on all training classes less the grid's validation classes"
    )


def write_fair_report(
    setup: FairSetup, states: list[StudyState], default_dir: Path, tuned_dir: Path, fair_dir: Path
) -> Path:
    """``<fair_dir>/report.md`` from the studies' states and the two re-run folders."""
    default, tuned = test_block(default_dir, setup), test_block(tuned_dir, setup)
    first = setup.studies[0].setup
    per = "seed and fold" if setup.fair.folds else "seed"
    lines = [
        f"# Fair comparison: {setup.name}",
        "",
        f"- Every loss tuned with the same budget: {setup.fair.trials} trials, pruner "
        f"{setup.fair.pruner.name}, TPE seed {setup.fair.sampler.seed}; objective: validation "
        f"{first.metric} (mean over trial seeds {setup.fair.seeds}{_folds_words(setup)}; the test set is "
        f"never looked at), {first.template.train.iterations} iterations per {per}.",
        f"- Then default and tuned hyperparameters re-run over seeds {list(setup.experiment.grid.seeds)} "
        f"on the test set: `{default_dir}` and `{tuned_dir}` (their own report.md has every metric).",
        "",
    ]
    lines += _budget_section(setup, states)
    lines += _comparison_section(default, tuned, setup)
    lines += _decisions_section(default, tuned, _control(setup))
    lines += _ranking_section(default, tuned, setup)
    path = fair_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
