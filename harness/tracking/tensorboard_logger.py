"""The TensorBoard logger: a cell's scalars and hyperparameters as event files in ``cells/<id>/tensorboard/``.

``tensorboard --logdir results/<experiment>`` shows every cell of the grid as one run (the run's path
names the cell id; its ``label`` hyperparameter and its ``cell`` text give
:func:`~harness.tracking.run_label`),
refreshed while it trains. The hyperparameters go to the hparams plugin as a session-start record
(no experiment record: the plugin then offers every scalar tag, the final metrics included, as a
metric column); the session-end record carries the cell's status.

A cell trained from scratch replaces the folder's event files (a re-run with ``--force`` or after a
crash before the first checkpoint trains anew). A resumed cell writes a new event file with
``purge_step`` at its first new iteration: TensorBoard drops what the old files hold from that step on
(steps logged after the checkpoint the cell resumed from), so no step is shown twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.records import CellStatus

if TYPE_CHECKING:
    from harness.config import CellConfig
    from harness.results import CellPaths
    from harness.tracking import HParam

TENSORBOARD_DIR = "tensorboard"
"""The folder of a cell's event files."""
EVENT_FILES = "events.out.tfevents.*"
FLUSH_SECONDS = 10
"""How often the writer flushes to disk: what a watching TensorBoard can lag behind."""


def event_files(folder: Path) -> list[Path]:
    """The event files in ``folder``, oldest first (their names start with the creation time)."""
    return sorted(folder.glob(EVENT_FILES))


def session_start(hparams: Mapping[str, HParam]) -> Any:
    """The hparams plugin's session-start summary: the run's hyperparameters (booleans stay booleans)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo()
    for name, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, int | float):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info)
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, data)


def session_end(status: CellStatus) -> Any:
    """The hparams plugin's session-end summary: success for a finished cell, failure otherwise."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    ended = api_pb2.STATUS_SUCCESS if status == CellStatus.FINISHED else api_pb2.STATUS_FAILURE
    data = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(status=ended))
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, data)


def _hparams_summary(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


class Logger:
    """A cell's TensorBoard run (see the module docstring)."""

    def __init__(self, cfg: CellConfig, paths: CellPaths) -> None:
        self.folder = paths.root / TENSORBOARD_DIR
        self.cell_id = cfg.cell_id
        self.writer: Any = None

    def start(self, run_name: str, hparams: Mapping[str, HParam], first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        earlier = event_files(self.folder)
        resuming = first_step > 1 and bool(earlier)
        if not resuming:  # a training from scratch: the events of an earlier one would mix with it
            for path in earlier:
                path.unlink()
        self.writer = SummaryWriter(
            str(self.folder), purge_step=first_step if resuming else None, flush_secs=FLUSH_SECONDS
        )
        if not resuming:  # a resumed run keeps these from its first file (step 0 is never purged)
            self.writer.file_writer.add_summary(session_start(hparams), global_step=0)
            self.writer.add_text("cell", f"{run_name} (cell {self.cell_id})", global_step=0)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self, status: CellStatus | None) -> None:
        if self.writer is None:
            return
        if status is not None:
            self.writer.file_writer.add_summary(session_end(status), global_step=0)
        self.writer.close()
        self.writer = None
