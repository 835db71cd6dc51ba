"""``python -m harness.fair FILE``: the fair protocol, every loss tuned with the same budget, then judged on the test set.

A fair file is an experiment file (same schema, ``base:`` chains, ``--set`` overrides) whose grid is one
block (one dataset, embedding size and variant; several losses and seeds), plus a ``fair:`` section: the
trials every loss gets, the seeds each trial trains, overrides for the trials' shorter protocol
(``trial_set``), the TPE sampler, the pruner, and optional per-loss search spaces (by default each
loss's space as the loss library declares it). The command then:

1. runs one Optuna study per loss, all with the same trial count, pruner and sampler settings, on one
   storage (``<results>/<name>/studies.db``, or ``--storage URL`` so several machines join), filled by
   ``--workers N`` processes; the objective is validation Recall@1, the test set is never looked at
   (each trial is a harness.tune trial: :func:`harness.tune.run_worker`); ``fair.folds: K`` makes each
   trial the mean over K class-disjoint folds of the training classes (``data.val_folds``/``val_fold``);
2. writes ``default.yaml`` (the grid as written) and ``tuned.yaml`` (each loss at its study's best
   values) and runs both over the grid's seeds on the test set with ``harness.run``;
3. writes ``report.md``: per loss default and tuned side by side with paired statistics, the tuned
   values, the budget each study used, and how the ranking moves (Kendall tau, against the paper).

Re-running continues where it stopped: studies fill up to their trial count, finished cells are skipped.

Modules: ``schema`` (the fair file), ``studies`` (filling the studies), ``reruns`` (default.yaml,
tuned.yaml, run with :func:`harness.run.run_experiment`), ``report`` (report.md), ``cli`` (the command
line and what the fair studies add to the steps of :mod:`harness.studies.command`).
"""

from harness.fair.cli import build_parser, main
from harness.fair.report import test_block, tuned_vs_default, write_fair_report
from harness.fair.reruns import default_experiment, tuned_experiment
from harness.fair.schema import FairConfig, FairSetup, LossStudy, load_fair, study_key, validate_fair
from harness.fair.studies import StudyState, default_storage, fill_studies, study_state, worker_order

__all__ = [
    "FairConfig",
    "FairSetup",
    "LossStudy",
    "StudyState",
    "build_parser",
    "default_experiment",
    "default_storage",
    "fill_studies",
    "load_fair",
    "main",
    "study_key",
    "study_state",
    "test_block",
    "tuned_experiment",
    "tuned_vs_default",
    "validate_fair",
    "worker_order",
    "write_fair_report",
]
