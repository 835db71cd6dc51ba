"""Reading a finished cell back for one's own analysis: its config, its trained model, its embeddings.

``cell = harness.load_cell("results/tiny/cells/<id>")`` reads the cell's ``config.json`` into a
:class:`~harness.config.CellConfig` (checking its stored id; the plugins its experiment imported are
imported first) and its ``final.json``;
``cell.model("selected")`` is the embedding model with the weights the run kept
(``train.keep_weights: true``); ``cell.embed("test")`` gives ``(embeddings, labels)`` of a split,
computed exactly as the trainer's evaluation does (same builders, same embedding code), so metrics
recomputed from them equal those in ``final.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import ValidationError

from harness.builders import build_model, load_splits
from harness.config import CellConfig, load_yaml, validation_message
from harness.data import DatasetSplits
from harness.data.transforms import get_convention
from harness.errors import DamagedFileError, UserError
from harness.files import read_json
from harness.models import EmbeddingModel, backbone_entry
from harness.plugins import load_plugins
from harness.records import FinalRecord
from harness.results import CellPaths
from harness.train import autocast_dtype, embed

Weights = Literal["selected", "final"]
SPLITS = ("train", "val", "test", "query", "gallery")
"""The splits a cell can embed; which exist depends on its dataset (see ``DatasetSplits``)."""


@dataclass(frozen=True)
class LoadedCell:
    """A stored cell: its folder (``paths``), its :class:`CellConfig` and its final record (None if
    unfinished)."""

    paths: CellPaths
    config: CellConfig
    final: FinalRecord | None

    def splits(self) -> DatasetSplits:
        """The cell's dataset splits, built as its training built them (cached per process)."""
        return load_splits(self.config)

    def model(self, weights: Weights = "selected", *, device: str | torch.device = "cpu") -> EmbeddingModel:
        """The embedding model with the cell's ``selected`` (default) or ``final`` weights, in eval mode.

        The weights files exist only for cells trained with ``train.keep_weights: true``.
        """
        if weights not in ("selected", "final"):
            raise UserError(f"weights {weights!r}: expected 'selected' or 'final'")
        path = self.paths.weights(weights)
        if not path.is_file():
            raise UserError(
                f"{path}: cell {self.config.cell_id} kept no {weights} weights (it was trained without "
                "train.keep_weights: true); set it and re-run the cell with --force to keep them"
            )
        cfg = self.config  # the cell's own weights replace any pretrained ones: none are read
        untrained = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})})
        channels = get_convention(backbone_entry(cfg.model.backbone).convention).channels
        model = build_model(untrained, channels)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as err:  # a damaged or foreign file: the user deletes it or re-runs the cell
            raise DamagedFileError(
                f"{path}: cannot be loaded into the cell's model ({type(err).__name__}); re-run the cell "
                "with --force to write it again"
            ) from None
        return model.to(device).eval()

    def embed(
        self,
        split: str,
        weights: Weights = "selected",
        *,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings (n, d) float32, labels (n,) int64)`` of one split, in the split's order.

        ``split`` is ``train``, ``val``, ``test``, or ``query`` / ``gallery`` for In-Shop. ``train``
        is embedded as the trainer sees it, with its training augmentation. The batch size defaults to
        the cell's ``evaluate.batch_size``.
        """
        if split not in SPLITS:
            raise UserError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        dataset = getattr(self.splits(), split)
        if dataset is None:
            present = [name for name in SPLITS if getattr(self.splits(), name) is not None]
            raise UserError(
                f"cell {self.config.cell_id} has no {split!r} split ({self.config.dataset}: "
                f"{', '.join(present)})"
            )
        device = torch.device(device)
        return embed(
            self.model(weights, device=device),
            dataset,
            device=device,
            batch_size=batch_size or self.config.evaluate.batch_size,
            workers=self.config.data.workers,
            amp=autocast_dtype(self.config.train.amp, device),
        )


def load_cell(cell_dir: str | os.PathLike[str]) -> LoadedCell:
    """Read the cell stored in ``cell_dir`` (``results/<experiment>/cells/<id>``); every problem is one
    line."""
    paths = CellPaths(Path(cell_dir))
    if not paths.config.is_file():
        raise UserError(f"{paths.root}: no config.json; give a cell folder, results/<experiment>/cells/<id>")
    data = read_json(paths.config, remedy="re-run the cell with --force")
    recorded = paths.root.parent.parent / "experiment.yaml"  # its imports: register the plugin losses
    if recorded.is_file():
        imports = (load_yaml(recorded) or {}).get("imports") or []
        load_plugins(imports, where=f"{recorded}: imports")
    try:
        config = CellConfig.model_validate(data)
    except ValidationError as err:
        raise DamagedFileError(validation_message(str(paths.config), err)) from None
    return LoadedCell(paths, config, paths.read_final())
