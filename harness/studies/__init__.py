"""What ``harness.tune`` and ``harness.fair`` share: Optuna storages and the steps of a study command.

Modules: ``storage`` (opening an Optuna storage from a URL), ``command`` (the steps both commands run:
storage, prepare, workers, wait, outputs, the exit code, over a :class:`StudyCommand`).
"""

from harness.studies.command import (
    EXIT_FAILED_WORKER,
    StudyCommand,
    add_study_arguments,
    run_study_command,
    worker_commands,
    worker_exit_code,
)
from harness.studies.storage import Heartbeat, open_storage, shown_url, sqlite_url, with_installed_driver

__all__ = [
    "EXIT_FAILED_WORKER",
    "Heartbeat",
    "StudyCommand",
    "add_study_arguments",
    "open_storage",
    "run_study_command",
    "shown_url",
    "sqlite_url",
    "with_installed_driver",
    "worker_commands",
    "worker_exit_code",
]
