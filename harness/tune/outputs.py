"""What a study leaves behind: best.yaml, summary.md and the figures."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from harness.config import validate_experiment
from harness.files import atomic_write_text
from harness.studies.storage import shown_url
from harness.tune.schema import TuneSetup, best_experiment
from harness.tune.trials import interrupted_trials, retried_numbers, trial_counts

if TYPE_CHECKING:
    from types import ModuleType

    import optuna
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure
    from optuna.trial import FrozenTrial

STATE_WORDS = (("complete", "complete"), ("pruned", "pruned"), ("fail", "failed"))


@contextlib.contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's log level (a :mod:`logging` level) for the block, then the one before."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def write_best(setup: TuneSetup, study: optuna.Study, study_dir: Path) -> Path | None:
    """``best.yaml`` from the best complete trial (None when no trial completed)."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    path = study_dir / "best.yaml"
    doc = best_experiment(setup, dict(best.params))
    validate_experiment(json.loads(json.dumps(doc)), str(path))
    header = (
        f"# Written by harness.tune: study {setup.name}, trial {best.number}, val {setup.metric} "
        f"{best.value:.4f}.\n# Re-run over seeds {setup.study.best_seeds} on the test set:\n"
        f"#   python -m harness.run {path}\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
    return path


FEW_TRIALS_FOR_IMPORTANCE = 20
"""Below this many complete trials the importances are marked as a rough guide (summary and figure)."""


def importance_caveat(complete: int) -> str:
    """The warning that goes with importances computed from ``complete`` trials ('' when there are enough)."""
    if complete >= FEW_TRIALS_FOR_IMPORTANCE:
        return ""
    return (
        f"computed from only {complete} complete trials (fewer than {FEW_TRIALS_FOR_IMPORTANCE}): a rough "
        "guide, which a few more trials can reorder"
    )


def _percent_axis(axis: Axis) -> None:
    """An axis of fractions (the objective, importances) labelled in percent, as every figure of a study."""
    from matplotlib import ticker

    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{100 * value:.3g}"))


def _importance_in_percent(ax: Axes) -> None:
    """Optuna's importance bars (fractions of the total) and their value labels in percent."""
    _percent_axis(ax.xaxis)
    ax.set_xlabel("share of the total importance (%)")
    for text in ax.texts:
        label = text.get_text()
        if label.startswith("<"):
            text.set_text(f"<{100 * float(label[1:]):g}")
        else:
            text.set_text(f"{100 * float(label):.0f}")


def _complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's complete trials (what the importances are computed from)."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def importances(setup: TuneSetup, study: optuna.Study) -> dict[str, float] | None:
    """Hyperparameter importances with the configured evaluator (None with fewer than 2 complete trials)."""
    import optuna

    if len(_complete_trials(study)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=setup.study.importance.build())


def _readable_log_ticks(ax: Axes) -> None:
    """Plain numbers on a log x axis: 1-2-5 ticks over a wide range, about 4 ticks over a narrow one."""
    from matplotlib import ticker

    if ax.get_xscale() != "log":
        return
    low, high = sorted(ax.get_xlim())
    wide = low > 0 and high / low >= 10
    ax.xaxis.set_major_locator(
        ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)) if wide else ticker.MaxNLocator(4)
    )
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _intermediate_values(
    setup: TuneSetup, study: optuna.Study, figures_dir: Path, report_plots: ModuleType
) -> list[Path]:
    """The trials' validation curves in the report's style (colour by trial number, pruned trials grey)."""
    rows = [
        {"trial": trial.number, "state": trial.state.name.lower(), "step": step, "value": 100 * value}
        for trial in study.get_trials(deepcopy=False)
        for step, value in trial.intermediate_values.items()
    ]
    if not rows:
        return []
    import pandas as pd

    best = next(iter(study.best_trials), None) if any(row["state"] == "complete" for row in rows) else None
    stem = figures_dir / "intermediate"
    written = report_plots.intermediate_values(
        pd.DataFrame(rows),
        best_trial=best.number if best else None,
        ylabel=f"validation {setup.metric} (%)",
        title=f"Trials of {setup.name}: validation {setup.metric} at each evaluation",
        stem=stem,
    )
    return [path for path in written if path.suffix == ".png"]


def write_figures(setup: TuneSetup, study: optuna.Study, figures_dir: Path) -> list[Path]:
    """Importance, optimisation history, slice, intermediate values and timeline as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    from harness.report import plots as report_plots

    complete = _complete_trials(study)
    target = f"val {setup.metric}"
    plots = {
        "history": lambda: oplt.plot_optimization_history(study, target_name=target),
        "slice": lambda: oplt.plot_slice(study, target_name=target),
        "timeline": lambda: oplt.plot_timeline(study),
    }
    if len(complete) >= 2:
        evaluator = setup.study.importance.build()
        plots = {
            "importance": lambda: oplt.plot_param_importances(study, evaluator=evaluator, target_name=target),
            **plots,
        }
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = _intermediate_values(setup, study, figures_dir, report_plots)
    for name, plot in plots.items():
        with warnings.catch_warnings(), optuna_verbosity(logging.ERROR), report_plots.figure_style():
            warnings.simplefilter("ignore")  # "no complete trials" and the like
            axes = plot()
        every = list(axes.flat) if hasattr(axes, "flat") else [axes]
        for ax in every:
            _readable_log_ticks(ax)
        figure = cast("Figure", every[0].figure)  # Optuna draws on a top-level figure, not a subfigure
        if name == "importance":
            evaluator_name = type(setup.study.importance.build()).__name__
            caveat = importance_caveat(len(complete))
            _importance_in_percent(every[0])
            every[0].set_title(
                f"Hyperparameter importances ({evaluator_name})" + (f"\n{caveat}" if caveat else ""),
                loc="left",
            )
        elif name in ("history", "slice"):  # the objective is a fraction: shown in percent
            for ax in every:
                _percent_axis(ax.yaxis)
            every[0].set_ylabel(f"{target} (%)")
        figure.set_size_inches(max(figure.get_size_inches()[0], 7.0), max(figure.get_size_inches()[1], 4.5))
        path = figures_dir / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def _wall_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The study's span from the stored trials (first start to last end, over every run that added trials),
    so a summary rebuilt from the storage says the same; 0 without a finished trial."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def write_summary(
    setup: TuneSetup,
    study: optuna.Study,
    study_dir: Path,
    *,
    storage_url: str,
    figures: list[Path],
) -> Path:
    """``summary.md``: best value and parameters, trial counts, importances, the trial table, the figures."""
    trials = study.get_trials(deepcopy=False)  # one read for the counts, the times and the trial table
    counts = trial_counts(trials)
    stopped = len(interrupted_trials(trials))
    names = list(setup.study.space)
    trial_seconds = sum(t.duration.total_seconds() for t in trials if t.duration)
    lines = [f"# Study {setup.name}", ""]
    lines += [
        f"- Tune file: `{setup.source}`; storage: `{shown_url(storage_url, relative_to=study_dir)}`",
        f"- Objective: validation {setup.metric} (maximised; the test set is never looked at), loss "
        f"`{setup.template.loss.name}` on `{setup.template.dataset}`, "
        f"embedding {setup.template.embedding_size}, "
        f"{setup.template.train.iterations} iterations per seed, seeds {setup.seeds}"
        + (f", {setup.study.folds} class folds per seed (the mean over them)" if setup.study.folds else ""),
        f"- Sampler: TPE (multivariate={setup.study.sampler.multivariate}, constant_liar="
        f"{setup.study.sampler.constant_liar}, n_startup_trials={setup.study.sampler.n_startup_trials}, "
        f"seed={setup.study.sampler.seed} per worker and run); pruner: {setup.study.pruner.name}",
        "- Trials: "
        + ", ".join(f"{counts.get(s, 0)} {word}" for s, word in STATE_WORDS)
        + "".join(f", {counts[s]} {s}" for s in ("running", "waiting") if counts.get(s))
        + f" ({counts['total']} in all)"
        + (f"; {stopped} interrupted, not counted: the next run retries them" if stopped else ""),
        f"- Wall time, first trial's start to last trial's end: {_wall_seconds(trials):.0f} s; trial "
        f"time summed over the study: {trial_seconds:.0f} s",
    ]
    try:
        best = study.best_trial
    except ValueError:
        best = None
    lines.append("")
    if best is None:
        lines.append("No trial completed yet, so there is no best trial and no best.yaml.")
    else:
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
        lines += [
            f"**Best**: trial {best.number}, val {setup.metric} = {best.value:.4f}; {params}.",
            "",
            f"Re-run it over seeds {setup.study.best_seeds} on the test set: "
            f"`python -m harness.run {study_dir / 'best.yaml'}`",
        ]
    lines += ["", f"## Importance ({setup.study.importance.describe()})", ""]
    values = importances(setup, study)
    if values is None:
        lines.append("Needs at least 2 complete trials.")
    else:
        caveat = importance_caveat(len(_complete_trials(study)))
        lines += [f"**Caveat**: {caveat}.", ""] if caveat else []
        lines += ["| hyperparameter | importance (% of the total) |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in values.items()]
    lines += [
        "",
        "## Trials",
        "",
        "| trial | state | value | " + " | ".join(names) + " | last step | seconds | note |",
        "|" + "---|" * (len(names) + 6),
    ]
    retried = retried_numbers(trials)
    for t in trials:
        note = (
            "surplus (not counted)"
            if t.user_attrs.get("surplus")
            else "stale, retried"
            if t.number in retried
            else t.user_attrs.get("fail_reason", "")
        )
        cells = [
            str(t.number),
            t.state.name.lower(),
            _fmt(t.value),
            *(_fmt(t.params.get(n)) for n in names),
            _fmt(t.last_step),
            _fmt(t.duration.total_seconds() if t.duration else None),
            note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures]
    path = study_dir / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_outputs(
    setup: TuneSetup, study: optuna.Study, study_dir: Path, *, storage_url: str
) -> dict[str, Any]:
    """best.yaml, the figures and summary.md; returns what was written."""
    best = write_best(setup, study, study_dir)
    figures = write_figures(setup, study, study_dir / "figures")
    summary = write_summary(setup, study, study_dir, storage_url=storage_url, figures=figures)
    return {"best": best, "figures": figures, "summary": summary}
