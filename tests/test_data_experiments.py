"""What every shipped experiment's cells really feed the model: transforms on a real image, sampler, preset."""

from __future__ import annotations

import typing
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import RUNNABLE_EXPERIMENTS
from PIL import Image
from pydantic import ValidationError
from torchvision.transforms import v2

import harness.data.official
from harness import builders
from harness.config import DataConfig, expand_cells, load_experiment
from harness.data import OFFICIAL, SAMPLERS, OfficialBatchSampler

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = RUNNABLE_EXPERIMENTS
PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))  # 500 x 375


def transforms_of(cell: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The train and eval transforms the trainer's own split builder makes for ``cell`` (no data is read)."""
    captured: dict[str, Any] = {}

    def capture(spec: Any, root: Any, **options: Any) -> dict[str, Any]:
        captured.update(options)
        return captured

    monkeypatch.setattr(harness.data.official, "build_official_splits", capture)
    monkeypatch.setattr(builders, "_SPLITS_CACHE", {})
    builders.load_splits(cell)
    return captured


def ops(transform: Any) -> list[Any]:
    assert isinstance(transform, v2.Compose)
    return list(transform.transforms)


def cell_groups() -> dict[str, list[Any]]:
    """The cells on a real dataset of every shipped experiment, grouped by file, variant, dataset and data config.

    The cells of one group (they differ only in loss, embedding size or seed) get the same transforms.
    """
    groups: dict[str, list[Any]] = {}
    for path in EXPERIMENTS:
        for cell in expand_cells(load_experiment(path)):
            if cell.dataset in OFFICIAL:
                key = f"{path.name}:{cell.variant}:{cell.dataset}:{cell.data.model_dump_json()}"
                groups.setdefault(key, []).append(cell)
    return groups


GROUPS = cell_groups()
CELLS = [(key.split(":")[0], cell) for key, cells in GROUPS.items() for cell in cells]


def test_the_shipped_experiments_have_official_variants() -> None:
    with_official = {name for name, cell in CELLS if cell.variant == "official"}
    assert with_official == {"ablation.yaml", "sota.yaml", "embedding_size.yaml"}


@pytest.mark.parametrize("group", GROUPS, ids=[key.split(":{")[0] for key in GROUPS])
def test_each_variant_applies_its_protocol_to_a_real_image(
    group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = GROUPS[group][0]
    official = cell.variant == "official"
    for member in GROUPS[group]:  # every cell of the group: the official variant's sampler and preset
        assert member.data.sampler == ("official" if official else "proportional")
        assert member.loss.preset == ("official" if official else member.loss.preset)
    built = transforms_of(cell, monkeypatch)
    train, test = ops(built["train_transform"]), ops(built["eval_transform"])
    if official:  # the official code: Resize(256) first in both, 227 px, scale 0.16-1
        assert isinstance(train[0], v2.Resize) and list(train[0].size) == [256]
        assert train[0](PHOTO).size == (341, 256)
        crop = train[1]
        assert isinstance(crop, v2.RandomResizedCrop) and tuple(crop.scale) == (0.16, 1.0)
        assert isinstance(train[2], v2.RandomHorizontalFlip)
        size, resize = 227, 256
    else:  # the paper: crops from the original image, 224 px, scale 0.08-1; test resize 256
        crop = train[0]
        assert isinstance(crop, v2.RandomResizedCrop) and tuple(crop.scale) == (0.08, 1.0)
        assert isinstance(train[1], v2.RandomHorizontalFlip)
        size, resize = 224, 256
    assert tuple(crop.size) == (size, size) and crop(PHOTO).size == (size, size)
    assert isinstance(test[0], v2.Resize) and list(test[0].size) == [resize]
    assert isinstance(test[1], v2.CenterCrop) and tuple(test[1].size) == (size, size)
    assert test[0](PHOTO).size == (round(500 * resize / 375), resize)
    assert test[1](test[0](PHOTO)).size == (size, size)
    torch.manual_seed(0)
    for transform in (built["train_transform"], built["eval_transform"]):
        assert transform(PHOTO).shape == (3, size, size)


class IndexDataset(torch.utils.data.Dataset):
    """Item i is (i, label i): the batches a loader yields show which indices the sampler chose."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, int(self.labels[index])


def test_the_official_variant_trains_on_the_official_sampler() -> None:
    from harness.train import training_batches

    cell = next(cell for name, cell in CELLS if cell.variant == "official")
    cell = cell.model_copy(update={"data": cell.data.model_copy(update={"workers": 0})})
    labels = np.repeat(np.arange(40), np.arange(40) % 9 + 2)  # 2-10 images per class
    splits = typing.cast(Any, type("Splits", (), {"train": IndexDataset(labels)}))
    start = 3
    got = [indices.tolist() for indices, _ in islice(training_batches(splits, cell, start, None), 4)]
    sampler = OfficialBatchSampler(
        labels, cell.data.classes_per_batch, cell.data.samples_per_class, seed=cell.seed, start=start
    )
    assert got == list(islice(iter(sampler), 4))


def test_config_offers_exactly_the_samplers_harness_data_has() -> None:
    assert DataConfig().sampler == "proportional"
    for name in SAMPLERS:
        assert DataConfig(sampler=name).sampler == name
    with pytest.raises(ValidationError, match=r"unknown sampler 'oficial'; did you mean 'official'"):
        DataConfig(sampler="oficial")
