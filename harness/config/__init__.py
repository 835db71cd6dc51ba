"""Experiment files: the typed schema, base-file defaults, ``--set`` overrides and the grid of cells.

An experiment YAML names a grid (losses x datasets x embedding sizes x variants x seeds) and the
training protocol. ``base: FILE`` pulls defaults from another YAML (relative to the experiment file),
deep-merged under the experiment's own keys. :func:`load_experiment` validates everything on load and
turns every mistake into a one-line :class:`~harness.errors.UserError` naming the YAML path, the value,
what was expected and, for names, the close matches. :func:`expand_cells` resolves the grid into
:class:`CellConfig` objects, each with a stable id derived from its resolved config.

An experiment's ``name`` (its results folder) is never inherited from a base file: a file without
``name:`` is named after its own file stem, so two experiment files never share a results folder by
accident. Files must be UTF-8 text; a key given twice in one mapping and a grid axis listing the same
entry twice are errors, not last-wins or a cell trained twice.

The package: :mod:`~harness.config.schema` (the models and cell ids), :mod:`~harness.config.cluster` (the
``cluster:`` section, Slurm resources that never enter a cell), :mod:`~harness.config.loading`
(YAML, bases, ``--set``, error messages) and :mod:`~harness.config.grid` (validation of a whole
experiment, its cells and shards). Importing it loads no torch.
"""

from harness.config.cluster import ClusterConfig
from harness.config.grid import (
    data_root,
    expand_cells,
    load_experiment,
    parse_shard,
    shard_cells,
    validate_experiment,
)
from harness.config.loading import (
    apply_sets,
    load_raw,
    load_yaml,
    parse_value,
    set_dotted,
    validation_message,
)
from harness.config.schema import (
    CELL_ID_VERSION,
    NON_NEGATIVE_HPARAMS,
    NOT_TRAINING,
    CellConfig,
    DataConfig,
    EvalConfig,
    Experiment,
    FolderName,
    Grid,
    LossSpec,
    ModelConfig,
    OptimConfig,
    ProtocolConfig,
    ScheduleConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "CELL_ID_VERSION",
    "NON_NEGATIVE_HPARAMS",
    "NOT_TRAINING",
    "CellConfig",
    "ClusterConfig",
    "DataConfig",
    "EvalConfig",
    "Experiment",
    "FolderName",
    "Grid",
    "LossSpec",
    "ModelConfig",
    "OptimConfig",
    "ProtocolConfig",
    "ScheduleConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_sets",
    "data_root",
    "expand_cells",
    "load_experiment",
    "load_raw",
    "load_yaml",
    "parse_shard",
    "parse_value",
    "set_dotted",
    "shard_cells",
    "validate_experiment",
    "validation_message",
]
