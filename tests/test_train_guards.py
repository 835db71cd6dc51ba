"""Guards against a broken trainer: each test fails on one plausible bug that still trains and reports
numbers.

What is guarded: selection reads only the validation split and keeps the best evaluation's weights, the
model embeds in eval mode, the lr changes exactly after its milestone update, a resumed cell trains only
what its checkpoint lacks, In-Shop is evaluated query -> gallery in one label space, the proportional
sampler's order within a class follows the seed, and a failed rename never replaces a file.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import WriteExperiment
from data_trees import write_jpeg, write_lines

from harness import files, train
from harness.builders import build_model, load_splits
from harness.config import CellConfig, expand_cells, load_experiment
from harness.data import MPerClassBatchSampler, build_splits
from harness.results import CellPaths
from harness.train import embed, evaluate_split, train_cell

CPU = torch.device("cpu")


def ms_cell(tiny_experiment: WriteExperiment, overrides: dict[str, Any] | None = None) -> CellConfig:
    """The tiny experiment's MS cell (24 iterations, evaluated every 8, unless overridden)."""
    (cell,) = expand_cells(load_experiment(tiny_experiment({"grid.losses": ["ms"], **(overrides or {})})))
    return cell


class BlankedOnRequest(torch.utils.data.Dataset):
    """A split whose images all turn blank once ``blank`` is set: equal embeddings, every tie lost,
    metrics 0."""

    def __init__(self, base: Any) -> None:
        self.base, self.labels, self.blank = base, base.labels, False

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return (torch.zeros_like(image) if self.blank else image), label


class CountingReads(torch.utils.data.Dataset):
    """A split that counts how many of its images were read."""

    def __init__(self, base: Any) -> None:
        self.base, self.labels, self.reads = base, base.labels, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.base[index]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_selection_reads_only_validation_and_reports_the_best_evaluations_weights(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    cell = ms_cell(tiny_experiment, {"train.keep_weights": True})
    metric = cell.train.select_metric
    loaded = load_splits(cell)
    val, test = BlankedOnRequest(loaded.val), CountingReads(loaded.test)
    splits = dataclasses.replace(loaded, val=val, test=test)
    seen: list[tuple[int, int]] = []

    def on_eval(iteration: int, values: dict[str, float]) -> None:
        seen.append((iteration, test.reads))
        val.blank = True  # every later validation scores 0: the first evaluation is the best

    paths = CellPaths(tmp_path / "cell")
    assert train_cell(cell, paths, splits=splits, on_eval=on_eval, progress=False).status == "finished"
    assert seen == [(8, 0), (16, 0), (24, 0)], "the test split was read before the end of training"
    rows = csv_rows(paths.evals)
    assert {row["split"] for row in rows} == {"val"}
    curve = {int(row["iteration"]): float(row["value"]) for row in rows if row["metric"] == metric}
    best = max(curve, key=lambda iteration: (curve[iteration], -iteration))  # the first maximum
    final = json.loads(paths.final.read_text())
    assert (
        best == 8
        and curve[8] > 0
        and (final["selected_iteration"], final["selected_value"]) == (best, curve[best])
    )

    model = build_model(cell, in_channels=int(loaded.train[0][0].shape[0]))

    def metrics_of(which: str, split: str) -> dict[str, float]:
        model.load_state_dict(torch.load(paths.weights(which), weights_only=True))
        return evaluate_split(model, splits, split, cell, CPU, None)

    val.blank = False
    assert metrics_of("selected", "val")[metric] == pytest.approx(
        curve[best], rel=1e-6
    )  # iteration 8's weights
    assert metrics_of("selected", "test") == pytest.approx(final["metrics"]["selected"]["test"], rel=1e-6)
    assert metrics_of("final", "test") == pytest.approx(final["metrics"]["final"]["test"], rel=1e-6)
    assert final["metrics"]["selected"]["test"] != final["metrics"]["final"]["test"]


def test_embedding_runs_the_model_in_eval_mode_and_restores_its_mode(
    tiny_experiment: WriteExperiment,
) -> None:
    cell = ms_cell(tiny_experiment)
    dataset = load_splits(cell).val
    model = build_model(cell, in_channels=int(dataset[0][0].shape[0])).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    embeddings, labels = embed(model, dataset, device=CPU, batch_size=16, workers=0, amp=None)
    assert model.training, "embedding must give the model back in the mode it found it"
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), (
        "evaluation moved BN running statistics"
    )
    model.eval()
    with torch.no_grad():
        expected = torch.cat(
            [
                model(torch.stack([dataset[i][0] for i in range(start, min(start + 16, len(dataset)))]))
                for start in range(0, len(dataset), 16)
            ]
        )
    torch.testing.assert_close(embeddings, expected)
    assert torch.equal(labels, torch.as_tensor(dataset.labels))


def test_the_lr_drops_after_the_milestone_update(
    tmp_path: Path, tiny_experiment: WriteExperiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/official-differences.md (row 6): milestone m means updates 1..m at the rate,
    m+1 on at rate x gamma."""
    cell = ms_cell(
        tiny_experiment,
        {
            "train.iterations": 7,
            "train.eval_every": 7,
            "schedule.milestones": [4],
            "schedule.gamma": 0.5,
            "optim.lr_backbone": 0.004,
            "optim.lr_head": 0.002,
        },
    )
    rates_used: list[list[float]] = []
    build_optimizer = train.build_optimizer

    def recording_optimizer(cfg: CellConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
        optimizer = build_optimizer(cfg, model)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: rates_used.append([g["lr"] for g in opt.param_groups])
        )
        return optimizer

    monkeypatch.setattr(train, "build_optimizer", recording_optimizer)
    train_cell(cell, CellPaths(tmp_path / "cell"), progress=False)
    assert rates_used == [[0.004, 0.002]] * 4 + [[0.002, 0.001]] * 3


def test_a_resumed_cell_trains_only_what_its_checkpoint_lacks_and_ends_as_an_uninterrupted_one(
    tmp_path: Path, tiny_experiment: WriteExperiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = ms_cell(
        tiny_experiment,
        {
            "train.iterations": 16,
            "train.eval_every": 4,
            "train.checkpoint_every": 4,
            "schedule.milestones": [8],
        },
    )
    reference = CellPaths(tmp_path / "reference")
    train_cell(cell, reference, progress=False)

    class Interrupted(Exception):
        pass

    def interrupt_at_12(iteration: int, values: dict[str, float]) -> None:
        if iteration == 12:  # before iteration 12's checkpoint: the last one is iteration 8's
            raise Interrupted

    paths = CellPaths(tmp_path / "cell")
    with pytest.raises(Interrupted):
        train_cell(cell, paths, on_eval=interrupt_at_12, progress=False)
    assert paths.checkpoint.is_file()
    trained: list[int] = []
    step = train._CellRun.step

    def counting_step(run: Any, iteration: int, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        trained.append(iteration)
        return step(run, iteration, images, labels)

    monkeypatch.setattr(train._CellRun, "step", counting_step)
    train_cell(cell, paths, progress=False)
    assert trained == list(range(9, 17))
    final, expected = json.loads(paths.final.read_text()), json.loads(reference.final.read_text())
    assert (final["metrics"], final["selected_iteration"]) == (
        expected["metrics"],
        expected["selected_iteration"],
    )
    assert csv_rows(paths.evals) == csv_rows(reference.evals)

    def losses_of(cell_paths: CellPaths) -> list[tuple[str, str]]:
        return [(row["iteration"], row["loss"]) for row in csv_rows(cell_paths.train_log)]

    assert losses_of(paths) == losses_of(reference)


def make_inshop_with_a_gallery_only_item(root: Path) -> None:
    """Train items 1, 2; item 5 only in the gallery (so query and gallery hold different item sets); 7, 8, 9
    with one query and two gallery images each, listed gallery first."""
    rows = [(item, "train", k) for item in (1, 2) for k in range(3)]
    rows += [(5, "gallery", k) for k in range(2)]
    rows += [(item, "gallery", k) for item in (9, 8, 7) for k in range(2)] + [
        (item, "query", 2) for item in (7, 8, 9)
    ]
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    for number, (item, status, k) in enumerate(rows):
        name = f"img/MEN/Tees/id_{item:08d}/{k:02d}_1_front.jpg"
        write_jpeg(root / "InShop" / name, seed=number)
        lines.append(f"{name} id_{item:08d} {status}")
    write_lines(root / "InShop" / "Eval" / "list_eval_partition.txt", lines)


def test_inshop_queries_its_gallery_in_one_label_space(
    tmp_path: Path, tiny_experiment: WriteExperiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_inshop_with_a_gallery_only_item(tmp_path)
    splits = build_splits("inshop", tmp_path, image_size=32, strict_counts=False)
    query, gallery = splits.query, splits.gallery
    same_item = query.class_ids[:, None] == gallery.class_ids[None, :]
    assert np.array_equal(query.labels[:, None] == gallery.labels[None, :], same_item)

    from harness import evaluate as evaluation

    calls: list[dict[str, Any]] = []
    measure = evaluation.evaluate

    def recording_evaluate(
        embeddings: torch.Tensor, labels: torch.Tensor, **options: Any
    ) -> dict[str, float]:
        calls.append({"embeddings": embeddings, "labels": labels, **options})
        return measure(embeddings, labels, **options)

    monkeypatch.setattr(evaluation, "evaluate", recording_evaluate)
    cell = ms_cell(tiny_experiment)
    model = build_model(cell, in_channels=3).eval()
    result = evaluate_split(model, splits, "test", cell, CPU, None)
    (call,) = calls
    assert call["gallery"] is not None and call["gallery_labels"] is not None
    assert torch.equal(call["labels"], torch.as_tensor(query.labels))
    assert torch.equal(call["gallery_labels"], torch.as_tensor(gallery.labels))
    options = {"device": CPU, "batch_size": 4, "workers": 0, "amp": None}
    queries, _ = embed(model, query, **options)
    references, _ = embed(model, gallery, **options)
    torch.testing.assert_close(call["embeddings"], queries)
    torch.testing.assert_close(call["gallery"], references)
    expected = measure(
        queries,
        torch.as_tensor(query.labels),
        ks=[1, 2, 4],
        metrics=tuple(cell.evaluate.metrics),
        gallery=references,
        gallery_labels=torch.as_tensor(gallery.labels),
    )
    assert result == pytest.approx(expected, rel=1e-6)


def test_the_proportional_samplers_order_within_a_class_follows_the_seed() -> None:
    labels = np.repeat(np.arange(6), 12)
    m = 4

    def first_chunk_of_class_0(seed: int) -> tuple[int, ...]:
        for batch in itertools.islice(MPerClassBatchSampler(labels, 3, m, seed=seed), 40):
            for start in range(0, len(batch), m):
                if labels[batch[start]] == 0:
                    return tuple(batch[start : start + m])
        raise AssertionError("class 0 never drawn")

    assert first_chunk_of_class_0(0) == first_chunk_of_class_0(0)
    assert len({first_chunk_of_class_0(seed) for seed in range(6)}) > 3


WRITERS = {
    "bytes": lambda path: files.atomic_write_bytes(path, b"new"),
    "text": lambda path: files.atomic_write_text(path, "new"),
    "json": lambda path: files.atomic_write_json(path, {"status": "new"}),
    "csv": lambda path: files.atomic_write_csv(path, [{"a": 1}], ["a"]),
    "torch": lambda path: files.atomic_torch_save(path, {"weights": torch.zeros(3)}),
    "npz": lambda path: files.atomic_save_npz(path, {"pos": np.zeros(3)}),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_failing_rename_keeps_the_old_file_whole_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    target = tmp_path / "result"
    target.write_bytes(b"old content")

    def failing_rename(source: object, destination: object) -> None:
        raise OSError(errno.EIO, "rename failed")

    monkeypatch.setattr(files.os, "replace", failing_rename)
    with pytest.raises(OSError):
        WRITERS[writer](target)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["result"]
