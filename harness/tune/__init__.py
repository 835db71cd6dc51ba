"""``python -m harness.tune FILE``: an Optuna study over the loss hyperparameters of one grid cell.

A tune file is an experiment file (same schema, ``base:`` chains, ``--set`` overrides) whose grid
resolves to exactly one cell, plus a ``study:`` section: the search space, the TPE sampler, the pruner,
the importance evaluator and the seeds. Each trial trains that cell with the suggested hyperparameters
into ``<results>/<study>/trials/<number>/``, reports the validation metric (``train.select_metric``,
Recall@1 in the shipped files) at every evaluation so the pruner can stop it, and returns the best
validation value; the test set is never looked at. A trial whose loss turns non-finite is recorded as
FAIL and the study goes on.

The study lives in an Optuna storage: an SQLite file ``<results>/<study>/study.db`` by default,
``--storage postgresql://...`` for many machines, ``--storage journal:FILE`` for a journal file.
``--trials N`` is the total the study should hold (complete + pruned + failed), so a re-run continues an
interrupted study and does nothing once it is full; ``--workers N`` runs N processes on the storage.
Ctrl-C or SIGTERM (to the parent; it passes the signal on to its workers) stops the study cleanly: the
running trials are recorded as failed (``interrupted``, not counted toward ``--trials``), their folders
say so and keep their checkpoints, ``best.yaml`` and ``summary.md`` are written from what finished, and
one line says so on stderr; the exit code is 128 + the signal (130 for Ctrl-C, 143 for SIGTERM). The
next run retries each interrupted trial with its parameters in its folder. A worker whose parent is
killed outright (SIGKILL) notices within a second and stops the same way.
At the end the parent writes ``best.yaml`` (an experiment file for ``python -m harness.run``),
``summary.md`` and the importance, history, slice, intermediate-value and timeline plots.

Modules: ``schema`` (the tune file), ``study`` (opening the study, refusing other settings), ``trials``
(training a trial, counting the study's places), ``outputs`` (best.yaml, summary, figures), ``cli``
(the command line and what a tune study adds to the steps of :mod:`harness.studies.command`). Storages
are :mod:`harness.studies.storage`, stop signals :mod:`harness.stopping`, worker processes
:mod:`harness.pool`; :mod:`harness.fair` shares them all.
"""

from harness.stopping import Interrupted, StopSignals
from harness.studies.storage import open_storage, shown_url, with_installed_driver
from harness.tune.cli import EXIT_FAILED_WORKER, STORAGE_ENV, TuneCommand, build_parser, main
from harness.tune.outputs import (
    STATE_WORDS,
    importances,
    write_best,
    write_figures,
    write_outputs,
    write_summary,
)
from harness.tune.schema import (
    HeartbeatConfig,
    ImportanceConfig,
    PrunerConfig,
    Range,
    SamplerConfig,
    StudyConfig,
    TuneSetup,
    best_experiment,
    load_tune,
    validate_tune,
)
from harness.tune.study import default_storage, open_study, worker_seed
from harness.tune.trials import (
    Objective,
    SurplusTrial,
    TrialFailed,
    counted_trials,
    interrupted_trials,
    retried_numbers,
    retry_interrupted,
    run_worker,
    study_counts,
    study_is_full,
    trial_cell,
)

__all__ = [
    "EXIT_FAILED_WORKER",
    "STATE_WORDS",
    "STORAGE_ENV",
    "HeartbeatConfig",
    "ImportanceConfig",
    "Interrupted",
    "Objective",
    "PrunerConfig",
    "Range",
    "SamplerConfig",
    "StopSignals",
    "StudyConfig",
    "SurplusTrial",
    "TrialFailed",
    "TuneCommand",
    "TuneSetup",
    "best_experiment",
    "build_parser",
    "counted_trials",
    "default_storage",
    "importances",
    "interrupted_trials",
    "load_tune",
    "main",
    "open_storage",
    "open_study",
    "retried_numbers",
    "retry_interrupted",
    "run_worker",
    "shown_url",
    "study_counts",
    "study_is_full",
    "trial_cell",
    "validate_tune",
    "with_installed_driver",
    "worker_seed",
    "write_best",
    "write_figures",
    "write_outputs",
    "write_summary",
]
