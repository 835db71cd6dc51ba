"""The fair report: per loss, default and tuned test results side by side, the budget used, the decisions,
the ranking."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.fair.schema import FairSetup
from harness.fair.select import Rescored, Selection
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
    """Seeds x losses (study keys) of test Recall@1 in percent, selected weights, finished cells of the grid's
    seeds only (``exp_dir`` may be a larger run, e.g. the main job's folder given to ``--defaults``)."""
    cells = read_cells(exp_dir)
    keep = (cells["split"] == "test") & (cells["metric"] == METRIC) & (cells["weights"] == WEIGHTS)
    grid = setup.experiment.grid
    keep &= cells["seed"].isin(grid.seeds) & (cells["dataset"] == grid.datasets[0])  # a larger run: this grid
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


def _pct(value: float | None) -> str:
    return num(None if value is None else 100 * value)


def _values_words(selection: Selection) -> str:
    """The tuned values next to the defaults, or why the defaults are kept."""
    study = selection.study
    if not selection.params:
        return (
            "defaults kept (no complete trial)"
            if selection.value is None
            else "defaults kept (best on validation)"
        )
    defaults = study.spec.resolved()["hparams"]
    return ", ".join(
        f"{name} {selection.params[name]:.4g} (default {defaults.get(name, '–')})"
        for name in study.setup.study.space
        if name in selection.params
    )


def _main_section(
    setup: FairSetup, selections: list[Selection], default: pd.DataFrame, tuned: pd.DataFrame
) -> list[str]:
    """The first table: per loss, validation default vs tuned, then test default vs tuned, paired."""
    keys, labels = [s.key for s in setup.studies], setup.labels
    table = tuned_vs_default(default, tuned, keys).set_index("key")
    rows = [
        [
            esc(labels[sel.study.key]),
            _pct(sel.default_value),
            _pct(sel.value),
            _mean_ci(default[sel.study.key]),
            _mean_ci(tuned[sel.study.key]),
            f"{num(table.at[sel.study.key, 'mean_diff'], sign=True)} "
            f"[{num(table.at[sel.study.key, 'ci_low'], sign=True)}, "
            f"{num(table.at[sel.study.key, 'ci_high'], sign=True)}]",
            p_value(table.at[sel.study.key, "p_holm"]),
            table.at[sel.study.key, "decision"],
        ]
        for sel in selections
    ]
    header = [
        "loss",
        "val default",
        "val tuned",
        "test default [95% CI]",
        "test tuned [95% CI]",
        "test tuned − default [95% CI]",
        "p (Holm)",
        "decision",
    ]
    metric = setup.studies[0].setup.metric
    rescored = (
        f" after re-scoring on the re-runs' protocol (the defaults and the best {setup.fair.rescore} trials "
        "of each study; see Tuned values)"
        if setup.protocol_changes
        else ""
    )
    guarantee = (
        "The defaults are a candidate of every study, so val tuned >= val default by construction."
        if setup.fair.default_first or setup.protocol_changes
        else "fair.default_first is off: the defaults were not a candidate, so val tuned may be below them."
    )
    seeds = sorted(set(default.index) | set(tuned.index))
    return [
        f"## Default and tuned: validation (selection), then test ({metric}, %)",
        "",
        "Validation: the studies' objective, on the validation classes only"
        f"{_folds_words(setup, short=True)}, of the defaults and of the selected values{rescored}. "
        f"{guarantee} Test: mean over the "
        f"{len(seeds)} paired seeds {seeds} with 95% t intervals, tuned − default paired over seeds, Holm "
        f"over the {len(keys)} losses; the decision names the better arm or the smallest difference the "
        "design detects with 80% power. The tuned validation value is the best of many noisy trials and so "
        "flatters the tuned values; the test columns, on other classes and seeds, are the honest comparison.",
        "",
        markdown_table(header, rows),
        "",
    ]


def _budget_words(setup: FairSetup, states: list[StudyState]) -> str:
    """The budget in trials and CPU-seconds."""
    fair, first = setup.fair, setup.studies[0].setup
    full = [s.default_cpu_seconds for s in states if s.default_cpu_seconds is not None]
    pruned = (
        "never pruned"
        if fair.pruner.name == "none"
        else f"pruned by {fair.pruner.name} at the trials' evaluation points (every "
        f"{first.template.train.eval_every} iterations)"
    )
    cpu = (
        f"; one unpruned trial (the default trial) took {num(min(full), 1)}-{num(max(full), 1)} CPU-s, so a "
        f"study costs at most about {num(fair.trials * max(full), 0)} CPU-s ({fair.trials} unpruned "
        "trials; pruning spends less)"
        if full
        else ""
    )
    return (
        f"Every loss gets the same budget: {fair.trials} trials ({len(states) * fair.trials} in all), each "
        f"training up to {first.steps} iterations, {pruned}{cpu}."
    )


def _convergence_words(state: StudyState, within: float) -> str:
    gain = state.last_third_gain()
    if state.counts["total"] < state.study.setup.study.trials:
        return "study not full"
    if len(state.history) < 3:
        return "– (fewer than 3 trials)"
    if gain is None:
        return "– (no complete trial in the first two thirds)"
    if 100 * gain <= within:
        return f"converged (+{num(100 * gain)} <= {num(within, 1)})"
    return f"budget too small for this loss (+{num(100 * gain)} > {num(within, 1)})"


def _budget_section(setup: FairSetup, states: list[StudyState], fair_dir: Path) -> list[str]:
    labels = setup.labels
    where = " (trials' protocol)" if setup.protocol_changes else ""
    rows = []
    for state in states:
        c, curve = state.counts, state.best_so_far()
        cut = math.ceil(2 * len(curve) / 3) if curve else 0
        rows.append(
            [
                esc(labels[state.study.key]),
                c.get("complete", 0),
                c.get("pruned", 0),
                c.get("fail", 0),
                f"{c['total']} / {setup.fair.trials}",
                num(state.cpu_seconds, 1),
                _pct(curve[cut - 1]) if cut else "–",
                _pct(curve[-1]) if curve else "–",
                _convergence_words(state, setup.fair.converged_within),
            ]
        )
    header = [
        "loss",
        "complete",
        "pruned",
        "failed",
        "used / budget",
        "CPU-s",
        "best val after 2/3 of the trials" + where,
        "best val at the end" + where,
        f"last third (converged: gain <= {num(setup.fair.converged_within, 1)} points)",
    ]
    figure = convergence_figure(setup, states, fair_dir / "figures" / "convergence")
    words = {labels[s.study.key]: _convergence_words(s, setup.fair.converged_within) for s in states}
    small = [label for label, w in words.items() if w.startswith("budget too small")]
    assessed = [label for label, w in words.items() if w.startswith(("converged", "budget too small"))]
    if small:
        verdict = (
            f"The budget was too small for {', '.join(small)}: the last third of the trials still raised the "
            "best validation value by more than the stated amount, so more trials could change the tuned "
            "values."
        )
    elif assessed:
        verdict = (
            f"Every study assessed ({len(assessed)} of {len(states)}) converged: the last third of its "
            f"trials raised its best validation value by at most {num(setup.fair.converged_within, 1)}"
            " points."
        )
    else:
        verdict = "No study could be assessed for convergence (see the last column)."
    lines = [
        "## Budget and convergence",
        "",
        _budget_words(setup, states),
        "",
        markdown_table(header, rows),
        "",
        verdict,
        "",
    ]
    if figure:
        lines += [
            f"![best-so-far validation {setup.studies[0].setup.metric} per trial](figures/convergence.png)",
            "",
        ]
    return lines


def convergence_figure(setup: FairSetup, states: list[StudyState], stem: Path) -> list[Path]:
    """Best-so-far validation value (%) against trial number, one line per loss; the last third shaded."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from harness.report.plots import figure_style, label_styles, legend_outside, save_figure

    labels = setup.labels
    curves = {labels[s.study.key]: s.best_so_far() for s in states}
    if not any(v is not None for curve in curves.values() for v in curve):
        return []
    styles = label_styles(list(curves))
    with figure_style():
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, curve in curves.items():
            points = [(i + 1, 100 * v) for i, v in enumerate(curve) if v is not None]
            ax.step(
                [p[0] for p in points], [p[1] for p in points], where="post", label=label, **styles[label]
            )
        trials = setup.fair.trials
        ax.axvspan(math.ceil(2 * trials / 3), trials, color="0.9", zorder=0, label="last third")
        ax.set_xlabel("trial number (1 = the defaults)" if setup.fair.default_first else "trial number")
        ax.set_ylabel(f"best validation {setup.studies[0].setup.metric} so far (%)")
        ax.set_xlim(1, max(trials, 2))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend_outside(ax)
        return save_figure(fig, stem)


def _rescored_words(r: Rescored) -> str:
    name = "defaults" if r.number is None else f"#{r.number}"
    return f"{name} {_pct(r.trial_value)} -> {_pct(r.value)}"


def _tuned_section(setup: FairSetup, selections: list[Selection]) -> list[str]:
    labels = setup.labels
    rows = [
        [
            esc(labels[sel.study.key]),
            "defaults" if sel.number is None and not sel.params else f"#{sel.number}",
            _values_words(sel),
        ]
        for sel in selections
    ]
    lines = ["## Tuned values", "", markdown_table(["loss", "selected trial", "values"], rows), ""]
    if setup.protocol_changes:
        lines += [
            "The trials trained a shorter protocol than the re-runs ("
            + "; ".join(setup.protocol_changes)
            + f"), so the defaults and the best {setup.fair.rescore} complete trials of each study were "
            "re-trained on the re-runs' protocol, on validation, and the best of those was selected (value "
            "on the trials' protocol -> on the re-runs' protocol, %):",
            "",
        ]
        rescored = [
            [
                esc(labels[sel.study.key]),
                "; ".join(_rescored_words(r) for r in sel.rescored),
            ]
            for sel in selections
        ]
        lines += [markdown_table(["loss", "re-scored candidates"], rescored), ""]
    return lines


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
    """Table 2's R@1 per loss label (losses the paper has, at their paper preset or none)."""
    paper = load_paper_tables()
    rows = (
        paper[(paper["table"] == ORDER_TABLE) & (paper["k"] == 1)].drop_duplicates("loss").set_index("loss")
    )
    labels = setup.labels
    values = {
        labels[s.key]: float(rows.at[s.spec.name, "recall"])
        for s in setup.studies
        if s.spec.name in rows.index and s.spec.preset in (None, "paper")
    }
    return pd.Series(values, dtype=float)


def _ranking_section(default: pd.DataFrame, tuned: pd.DataFrame, setup: FairSetup) -> list[str]:
    """Ranks by mean test value (columns: loss labels), and Kendall tau between the rankings."""
    means_default, means_tuned, paper = default.mean(), tuned.mean(), _paper_order(setup)
    rank_default = means_default.rank(ascending=False)
    rank_tuned = means_tuned.rank(ascending=False)
    rows = [
        [
            esc(label),
            num(rank_default.get(label, math.nan), 1),
            num(rank_tuned.get(label, math.nan), 1),
            num(paper.rank(ascending=False).get(label, math.nan), 1),
        ]
        for label in default.columns
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


def _folds_words(setup: FairSetup, short: bool = False) -> str:
    """How the trials validate with class folds ('' without them)."""
    k = setup.fair.folds
    if not k:
        return ""
    if short:
        return f" (mean over {k} class-disjoint folds of the training classes)"
    return (
        f" and {k} class-disjoint folds of the training classes, each validating a model trained on the "
        "other folds; the re-runs train on all training classes less the grid's validation classes"
    )


def _protocol_words(setup: FairSetup) -> str:
    """Whether the trials trained what the re-runs train."""
    t = setup.experiment
    grid = f"{t.train.iterations} iterations, lr milestones {list(t.schedule.milestones)}"
    if not setup.protocol_changes:
        return f"the trials train the re-runs' protocol ({grid})"
    return (
        f"the trials train a shorter protocol than the re-runs ({'; '.join(setup.protocol_changes)}); the "
        f"defaults and the best {setup.fair.rescore} trials of each study are re-scored on the re-runs' "
        f"protocol ({grid}), on validation, before the tuned values are chosen"
    )


def write_fair_report(
    setup: FairSetup,
    states: list[StudyState],
    selections: list[Selection],
    default_dir: Path,
    tuned_dir: Path,
    fair_dir: Path,
) -> Path:
    """``<fair_dir>/report.md`` (and ``figures/``) from the studies, the selections and the two re-runs."""
    labels = setup.labels
    default, tuned = test_block(default_dir, setup), test_block(tuned_dir, setup)
    first = setup.studies[0].setup
    per = "seed and fold" if setup.fair.folds else "seed"
    first_trial = (
        "the first trial of each study trains the loss's defaults (never pruned); "
        if setup.fair.default_first
        else ""
    )
    lines = [
        f"# Fair comparison: {setup.name}",
        "",
        f"- Every loss tuned with the same budget: {setup.fair.trials} trials, pruner "
        f"{setup.fair.pruner.name}, TPE seed {setup.fair.sampler.seed}; {first_trial}objective: validation "
        f"{first.metric} (mean over trial seeds {setup.fair.seeds}{_folds_words(setup)}; the test set is "
        f"never looked at), {first.template.train.iterations} iterations per {per}; "
        f"{_protocol_words(setup)}.",
        f"- Then default and tuned hyperparameters re-run over seeds {list(setup.experiment.grid.seeds)} "
        f"on the test set: `{default_dir}` and `{tuned_dir}` (their own report.md has every metric).",
        "",
    ]
    lines += _main_section(setup, selections, default, tuned)
    lines += _budget_section(setup, states, fair_dir)
    lines += _tuned_section(setup, selections)
    by_label_default, by_label_tuned = default.rename(columns=labels), tuned.rename(columns=labels)
    lines += _decisions_section(by_label_default, by_label_tuned, labels[_control(setup)])
    lines += _ranking_section(by_label_default, by_label_tuned, setup)
    path = fair_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
