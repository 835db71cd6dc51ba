"""``python -m harness.fair FILE``: the fair protocol, every loss tuned with the same budget,
then judged on the test set.

A fair file is an experiment file (same schema, ``base:`` chains, ``--set`` overrides) whose grid is one
block (one dataset, embedding size and variant; several losses and seeds), plus a ``fair:`` section: the
trials every loss gets (the first at the loss's defaults), the seeds each trial trains, overrides for what
the trials evaluate (``trial_set``), the TPE sampler, the pruner (Hyperband up to the full trial length), and
optional per-loss search spaces (by default each loss's space as the loss library declares it). The
command then:

1. runs one Optuna study per loss, all with the same trial count, pruner and sampler settings, on one
   storage (``<results>/<name>/studies.db``, or ``--storage URL`` so several machines join), filled by
   ``--workers N`` processes; the objective is validation Recall@1, the test set is never looked at
   (each trial is a harness.tune trial: :func:`harness.tune.run_worker`); ``fair.folds: K`` makes each
   trial the mean over K class-disjoint folds of the training classes (``data.val_folds``/``val_fold``);
2. chooses each loss's values on validation (the best trial; with a shorter trial protocol, the best of the
   defaults and the top trials re-scored on the re-runs' protocol: :mod:`harness.fair.select`);
3. writes ``default.yaml`` (the grid as written) and ``tuned.yaml`` (each loss at its selected values) and
   runs both over the grid's seeds on the test set with ``harness.run`` (``--defaults DIR`` reuses a
   finished run of the same grid);
4. writes ``report.md``: per loss validation and test, default and tuned, with paired statistics; the
   budget in trials and CPU-seconds with a convergence check and figure; the tuned values; how the
   ranking moves (Kendall tau, against the paper). ``--check`` validates and lists without training.

Re-running continues where it stopped: studies fill up to their trial count, finished cells are skipped.

Modules: ``schema`` (the fair file), ``studies`` (filling the studies), ``select`` (the tuned values),
``reruns`` (default.yaml,
tuned.yaml, run with :func:`harness.run.run_experiment`), ``report`` (report.md), ``cli`` (the command
line and what the fair studies add to the steps of :mod:`harness.studies.command`).
"""

from harness.fair.cli import build_parser, main
from harness.fair.report import test_block, tuned_vs_default, write_fair_report
from harness.fair.reruns import default_experiment, tuned_experiment
from harness.fair.schema import FairConfig, FairSetup, LossStudy, load_fair, study_key, validate_fair
from harness.fair.select import Selection, select_all
from harness.fair.studies import StudyState, default_storage, fill_studies, study_state, worker_order

__all__ = [
    "FairConfig",
    "FairSetup",
    "LossStudy",
    "Selection",
    "StudyState",
    "build_parser",
    "default_experiment",
    "default_storage",
    "fill_studies",
    "load_fair",
    "main",
    "select_all",
    "study_key",
    "study_state",
    "test_block",
    "tuned_experiment",
    "tuned_vs_default",
    "validate_fair",
    "worker_order",
    "write_fair_report",
]
