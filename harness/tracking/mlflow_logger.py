"""The MLflow logger: one MLflow run per cell, in the experiment named after the harness experiment.

Where: ``tracking.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else a local SQLite store,
``<results>/<experiment>/mlruns/mlflow.db`` (MLflow's plain-file store is closed to new data since
MLflow 3; browse the local store with ``mlflow ui --backend-store-uri sqlite:///<that file>``).
The run is named by :func:`~harness.tracking.run_label` and tagged ``cell_id``; its params are the
resolved hyperparameters, its metrics the trainer's scalars with their iterations as steps (``@``,
which MLflow does not allow in a name, is written ``_at_``: ``val/recall_at_1``).

A cell trained from scratch replaces the cell's earlier runs (they are deleted, as MLflow deletes:
recoverable from its trash); a resumed cell continues its latest run and skips the steps that run
already holds. Workers of ``--jobs N`` share the store: the local one is created under a file lock.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from harness.errors import UserError
from harness.records import CellStatus

if TYPE_CHECKING:
    from harness.config import CellConfig
    from harness.results import CellPaths
    from harness.tracking import HParam

MLRUNS_DIR = "mlruns"
"""The local store's folder, beside ``cells/``."""
CELL_TAG = "cell_id"
PARAMS_PER_BATCH = 100  # MLflow's limit on the params of one log_batch call
END_STATUS = {CellStatus.FINISHED: "FINISHED", CellStatus.FAILED: "FAILED", None: "KILLED"}
"""MLflow's run status for the cell's status (None: training stopped before the cell ended)."""


def metric_key(tag: str) -> str:
    """A trainer tag as an MLflow metric name: ``@`` as ``_at_``, any other character MLflow rejects as
    ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", tag.replace("@", "_at_"))


class Logger:
    """A cell's MLflow run (see the module docstring)."""

    def __init__(self, cfg: CellConfig, paths: CellPaths) -> None:
        self.experiment, self.cell_id = cfg.experiment, cfg.cell_id
        self.store = paths.root.parent.parent / MLRUNS_DIR
        self.uri = cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.client: Any = None
        self.run_id: str | None = None
        self.logged_up_to = 0

    def start(self, run_name: str, hparams: Mapping[str, HParam], first_step: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._start(run_name, hparams, first_step)
        except MlflowException as err:
            where = self.uri or f"the local store {self.store}"
            raise UserError(
                f"tracking: MLflow at {where} refused the run of cell {self.cell_id} ({err.message}); "
                "check tracking.mlflow_uri or $MLFLOW_TRACKING_URI, or remove mlflow from tracking.loggers"
            ) from None

    def _start(self, run_name: str, hparams: Mapping[str, HParam], first_step: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = self.uri is None
        if local:
            self.store.mkdir(parents=True, exist_ok=True)
        with FileLock(self.store / ".lock") if local else nullcontext():  # the first worker creates the store
            self.client = MlflowClient(tracking_uri=self.uri or f"sqlite:///{self.store.resolve()}/mlflow.db")
            experiment_id = self._experiment_id(local)
        earlier = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.{CELL_TAG} = '{self.cell_id}'",
            order_by=["attributes.start_time DESC"],
        )
        if first_step > 1 and earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_up_to = self._last_step(earlier[0])
            return
        for run in earlier:  # a training from scratch replaces the cell's earlier runs
            self.client.delete_run(run.info.run_id)
        run = self.client.create_run(experiment_id, run_name=run_name, tags={CELL_TAG: self.cell_id})
        self.run_id = run.info.run_id
        params = [Param(key, str(value)) for key, value in hparams.items()]
        for first in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[first : first + PARAMS_PER_BATCH])

    def _experiment_id(self, local: bool) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            location = (self.store / "artifacts").resolve().as_uri() if local else None
            try:
                return str(self.client.create_experiment(self.experiment, artifact_location=location))
            except MlflowException:  # another worker created it meanwhile
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)

    def _last_step(self, run: Any) -> int:
        """The last step the run holds a metric at (0 when none)."""
        steps = [
            entry.step
            for key in run.data.metrics
            for entry in self.client.get_metric_history(run.info.run_id, key)
        ]
        return max(steps, default=0)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_up_to:  # the run already holds this step (logged before the cell resumed)
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(metric_key(tag), float(value), stamp, step) for tag, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: CellStatus | None) -> None:
        if self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status=END_STATUS[status])
        self.run_id = None
