"""Live logging of each cell's training: the logger protocol the trainer calls and the backends behind it.

The trainer (:mod:`harness.train`) opens one logger per cell with :func:`open_loggers` (one run per cell,
named by :func:`run_label`) and logs, at the iteration they belong to:

- ``train/loss``, ``train/lr``, ``train/pos_pairs``, ``train/neg_pairs``, ``train/pos_weight_mean``,
  ``train/neg_weight_mean`` and ``train/images_per_s`` every ``train.log_every`` iterations (the
  train_log.csv row);
- ``<split>/<metric>`` (e.g. ``val/recall@1``) at every evaluation of the selection split;
- ``<weights>/<split>/<metric>`` (e.g. ``final/test/recall@1``, ``selected/test/recall@1``) at the end,
  at the last iteration (final.json's metrics);
- the resolved hyperparameters (:func:`run_hparams`) when the run starts.

The backends are named by ``tracking.loggers`` (keys of :data:`LOGGERS`): ``tensorboard`` (the default;
event files in ``cells/<id>/tensorboard/``, :mod:`.tensorboard_logger`) and ``mlflow`` (an optional
extra; one MLflow run per cell, :mod:`.mlflow_logger`). A new backend (W&B, ...) is one class with the
methods of :class:`RunLogger` and one :data:`LOGGERS` entry. A resumed cell (``first_step`` > 1)
continues its run without logging a step twice. Importing this module loads no torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import one_line

if TYPE_CHECKING:
    from harness.config import CellConfig
    from harness.records import CellStatus, Metrics
    from harness.results import CellPaths

HParam = str | int | float | bool
"""A hyperparameter value as the backends take it (lists and None are written as JSON text)."""


class RunLogger(Protocol):
    """One cell's run in a tracking backend: started once, then scalars by step, then closed."""

    def start(self, run_name: str, hparams: Mapping[str, HParam], first_step: int) -> None:
        """Open the run (``first_step`` > 1: continue the cell's run from there, dropping later steps)."""
        ...

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``{tag: value}`` at iteration ``step``."""
        ...

    def close(self, status: CellStatus | None) -> None:
        """End the run with the cell's status (None: training stopped before the cell ended); idempotent."""
        ...


@dataclass(frozen=True)
class Backend:
    """A registered logger: the module holding its ``Logger`` class and the package that module needs."""

    module: str
    package: str
    install: str


LOGGERS: dict[str, Backend] = {
    "tensorboard": Backend("harness.tracking.tensorboard_logger", "tensorboard", "pip install tensorboard"),
    "mlflow": Backend("harness.tracking.mlflow_logger", "mlflow", "pip install 'gpw-harness[mlflow]'"),
}
"""``tracking.loggers`` name -> backend."""


def missing_packages(cfg: CellConfig) -> list[str]:
    """One line per logger of ``cfg.tracking.loggers`` whose package is not installed (preflight's check)."""
    problems = []
    for name in cfg.tracking.loggers:
        backend = LOGGERS[name]
        if importlib.util.find_spec(backend.package) is None:
            problems.append(
                f"tracking.loggers: {name!r} needs the {backend.package} package, which is not installed; "
                f"install it ({backend.install}) or remove {name!r} from tracking.loggers"
            )
    return problems


class Loggers:
    """Several loggers as one (no logger at all: every call does nothing).

    A logger that fails while the cell trains (a tracking server gone, a full disk) is dropped with a
    one-line warning: the live view stops, the training and its results go on. Failing to start is an
    error (:func:`open_loggers`).
    """

    def __init__(self, loggers: Sequence[RunLogger] = ()) -> None:
        self.loggers = list(loggers)

    def start(self, run_name: str, hparams: Mapping[str, HParam], first_step: int) -> None:
        for logger in self.loggers:
            logger.start(run_name, hparams, first_step)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._each(lambda logger: logger.log_scalars(step, scalars))

    def log_metrics(self, step: int, metrics: Metrics) -> None:
        """final.json's ``{weights: {split: {metric: value}}}`` as ``<weights>/<split>/<metric>`` scalars."""
        self.log_scalars(
            step,
            {
                f"{weights}/{split}/{metric}": value
                for weights, splits in metrics.items()
                for split, values in splits.items()
                for metric, value in values.items()
            },
        )

    def close(self, status: CellStatus | None) -> None:
        self._each(lambda logger: logger.close(status))

    def _each(self, call: Callable[[RunLogger], None]) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as err:
                self.loggers.remove(logger)
                name = type(logger).__module__.rsplit(".", 1)[-1]
                print(
                    f"warning: {name}: live logging stopped for this cell: {one_line(str(err))}",
                    file=sys.stderr,
                )


def open_loggers(cfg: CellConfig, paths: CellPaths, first_step: int) -> Loggers:
    """The loggers of ``cfg.tracking.loggers`` for the cell in ``paths``, started at ``first_step``."""
    loggers = Loggers(
        [importlib.import_module(LOGGERS[name].module).Logger(cfg, paths) for name in cfg.tracking.loggers]
    )
    loggers.start(run_label(cfg), run_hparams(cfg), first_step)
    return loggers


def run_label(cfg: CellConfig) -> str:
    """A cell's readable name: its row label as the report gives it, with the preset, then the other axes.

    For example ``MS [official], glyphs d16, seed 0`` (the variant follows the size when not ``default``).
    """
    from harness.results import loss_label  # lazily: results imports torch

    label = cfg.loss.label or loss_label(cfg.loss.name)
    preset = f" [{cfg.loss.preset}]" if cfg.loss.preset else ""
    variant = "" if cfg.variant == "default" else f" {cfg.variant}"
    return f"{label}{preset}, {cfg.dataset} d{cfg.embedding_size}{variant}, seed {cfg.seed}"


def run_hparams(cfg: CellConfig) -> dict[str, HParam]:
    """The cell's resolved hyperparameters, flat with dotted keys: what it trains, every loss parameter
    resolved.

    The cell config without what does not change the training (``NOT_TRAINING``), the loss as
    ``loss.name``, ``loss.preset``, ``loss.label`` and ``loss.<hyperparameter>`` (resolved), plus
    ``cell_id`` and ``label`` (:func:`run_label`).
    """
    resolved = cfg.resolved_loss()
    tree: dict[str, Any] = cfg.model_dump(mode="json", exclude={**cfg.not_training, "loss": True})
    tree["loss"] = {
        "name": resolved["name"],
        "preset": resolved["preset"],
        "label": cfg.loss.label,
        **resolved["hparams"],
    }
    return {"cell_id": cfg.cell_id, "label": run_label(cfg), **_flatten(tree)}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, HParam]:
    flat: dict[str, HParam] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        else:  # a list, an empty mapping or None
            flat[name] = json.dumps(value)
    return flat
