"""The paper's path end to end on CPU: CUB-format JPEGs + a BN-Inception weights file -> harness.run -> report.

Nothing is downloaded: the JPEG tree is written by PIL in the official CUB-200-2011 layout and the
weights file is pretrainedmodels' BN-Inception (built with ``pretrained=None``) saved with
``torch.save`` without the BatchNorm ``num_batches_tracked`` counters, as files saved before PyTorch
0.4.1 are (the GPU check's run uses the modern format). Also: the prepared GPU check
(benchmarks/gpu_check.py) runs its steps on the CPU at small sizes, and says so and exits 0 on a
machine without a GPU.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"
EMBEDDING_SIZE = 64


def load_gpu_check() -> ModuleType:
    """benchmarks/gpu_check.py as a module (it holds the CUB-tree and weights-file writers)."""
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


def paper_rows(dataset: str, size: int) -> list[dict[str, str]]:
    """The paper's MS rows (Tables 3-5) for one dataset and embedding size, from harness/paper/."""
    rows = []
    for table in sorted((ROOT / "harness" / "paper").glob("table*.csv")):
        with table.open(newline="") as handle:
            rows += [
                r
                for r in csv.DictReader(handle)
                if r["dataset"] == dataset
                and r["loss"] == "ms"
                and int(r["embedding_size"]) == size
                and r["table"] != "2"
            ]
    return rows


def paper_experiment(folder: Path, data_root: Path, weights: Path) -> Path:
    """The paper's protocol (experiments/base.yaml: 224 px, frozen BN, Adam, val carve-out), two iterations."""
    experiment = gpu_check.cub_experiment(
        "paper-path",
        data_root,
        weights,
        embedding_size=EMBEDDING_SIZE,
        data={"workers": 0, "classes_per_batch": 2, "samples_per_class": 2},
        train={"iterations": 2, "eval_every": 2, "log_every": 1, "threads": 2},
    )
    path = folder / "paper-path.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


@pytest.mark.slow
def test_paper_protocol_cell_runs_from_jpegs_and_real_weights_to_the_report(tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    gpu_check.write_cub_tree(data_root, train_classes=10, test_classes=3, per_class=2)
    weights = tmp_path / gpu_check.BNINCEPTION_FILE
    gpu_check.save_bninception_weights(weights, batch_counters=False)  # pre-0.4.1 format: no BN counters
    experiment = paper_experiment(tmp_path, data_root, weights)
    results = tmp_path / "results"

    done = subprocess.run(
        [sys.executable, "-m", "harness.run", str(experiment), "--results", str(results), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr

    cells = list((results / "paper-path" / "cells").iterdir())
    assert len(cells) == 1
    final = json.loads((cells[0] / "final.json").read_text())
    assert final["status"] == "finished" and final["iterations"] == 2
    test = final["metrics"]["final"]["test"]
    assert {f"recall@{k}" for k in (1, 2, 4, 8, 16, 32)} <= set(test)
    assert all(0.0 <= test[f"recall@{k}"] <= 1.0 for k in (1, 2, 4, 8, 16, 32))
    config = json.loads((cells[0] / "config.json").read_text())
    assert config["data"]["image_size"] == 224 and config["model"]["backbone"] == "bninception"

    report = (results / "paper-path" / "report.md").read_text()
    expected = paper_rows("cub", EMBEDDING_SIZE)
    assert {r["k"] for r in expected} == {"1", "2", "4", "8", "16", "32"}
    table_rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in report.splitlines()
        if line.startswith("|")
    ]
    for row in expected:  # a table row of the report holds MS, this K and the paper's value
        assert any(
            "MS" in cells and row["k"] in cells and any(c.startswith(row["recall"]) for c in cells)
            for cells in table_rows
        ), f"the paper's MS R@{row['k']} = {row['recall']} is not in the report"


def test_cub_tree_is_read_by_the_loader_as_the_official_layout(tmp_path: Path) -> None:
    from harness.data import build_splits

    gpu_check.write_cub_tree(tmp_path, train_classes=4, test_classes=3, per_class=2)
    splits = build_splits("cub", tmp_path, strict_counts=False)
    assert sorted(set(splits.train.class_ids)) == [1, 2, 3, 4]
    assert sorted(set(splits.test.class_ids)) == [101, 102, 103]
    image, label = splits.test[0]
    assert tuple(image.shape) == (3, 224, 224) and label == 0


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [gpu_check.NO_GPU] == ["no GPU: not measured on GPU"]
    assert json.loads(out.read_text())["gpu"] is None


@pytest.mark.slow
def test_gpu_check_steps_run_on_cpu_at_small_sizes(tmp_path: Path) -> None:
    """The prepared GPU check's steps, shrunk and on the CPU, so the first GPU run does not find a plumbing bug."""
    model = gpu_check.measure_model(10, 64, 1, warmup=1, device="cpu")
    assert {"train_bf16_images_per_s", "train_fp32_images_per_s", "inference_bf16_images_per_s"} <= set(model)
    loss = gpu_check.loss_step(300, device="cpu", sizes=(80,))
    assert loss.status == "ok" and loss.figures["rows"][0]["m"] == "80"
    tiny = gpu_check.RunScale(
        train_classes=10, test_classes=3, per_class=2, jpeg_size=(64, 48), classes_per_batch=2, iterations=2
    )
    run = gpu_check.harness_run_step("run", 600, 1, tmp_path, tiny)
    assert run.status == "ok", run.output_tail
    assert run.figures["cell_status"] == "finished" and run.figures["device"] == "cpu"
    assert 0.0 <= run.figures["test_recall@1"] <= 1.0
    assert "run" in gpu_check.summary_lines([run])[0]
