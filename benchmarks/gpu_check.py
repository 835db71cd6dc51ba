"""The prepared GPU check: BN-Inception training speed, the loss and evaluation benchmarks, torchrun;
under 8 minutes.

One command for the first minutes on a GPU machine. Each step runs in its own subprocess with its own
timeout, all within one overall budget (``--budget``, 450 s by default), so the whole check ends in
under 8 minutes even when a step hangs:

1. ``model``: BN-Inception (pretrained=False), 224 px, batch 80 (16 classes x 5), MS loss, Adam,
   frozen BN statistics, channels-last, synthetic images already on the GPU: training images/s with
   bf16 autocast and in float32, inference images/s, peak GPU memory.
2. ``loss``: ``benchmarks/loss_speed.py --device cuda`` (ours against PML, the per-anchor reference
   and the matmul floor).
3. ``eval``: ``harness.evaluate`` on GPU tensors at the SOP and In-Shop sizes of
   ``benchmarks/eval_speed.py`` (same generator), with the query-by-query ranks compared with the CPU.
4. ``trainer``: ``benchmarks/train_speed.py`` with BN-Inception on synthetic images: the harness
   trainer (with its DataLoader) against a bare loop.
5. ``run``: ``python -m harness.run`` on a CUB-format tree of JPEG files written here, with a
   BN-Inception weights file saved here: the whole training path (decode, transforms, train,
   evaluate); the report is left out (it does not use the GPU; tests/test_paper_path.py covers it).
6. ``torchrun``: the same run with two processes when two GPUs are visible (skipped otherwise).

It prints a summary and writes every figure to ``--out`` (JSON). Without a GPU it prints
"no GPU: not measured on GPU" and exits 0.

    python benchmarks/gpu_check.py --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
BNINCEPTION_FILE = "bn_inception-52deb4733.pth"  # the pretrainedmodels file name the harness looks for
NO_GPU = "no GPU: not measured on GPU"
STEP_TIMEOUTS = {"model": 120, "loss": 100, "eval": 120, "trainer": 120, "run": 150, "torchrun": 150}


# ----------------------------------------------------------------------------- fixtures on disk


def write_cub_tree(
    root: Path,
    *,
    train_classes: int,
    test_classes: int,
    per_class: int,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> Path:
    """A CUB-200-2011 tree of real JPEG files under ``root/CUB_200_2011``: classes 1..train_classes and 101..

    The official layout (``images.txt``, ``image_class_labels.txt``, ``images/NNN.Name/*.jpg``), with
    ``per_class`` images of ``size`` (width, height) per class, each class a colour plus noise.
    Loading it needs ``data.strict_counts: false`` (the counts are not the official ones).
    """
    if not (1 <= train_classes <= 100 and 1 <= test_classes <= 100):
        raise ValueError("CUB has classes 1-100 for training and 101-200 for testing")
    from PIL import Image

    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for class_id in [*range(1, train_classes + 1), *range(101, 101 + test_classes)]:
        colour = rng.integers(0, 256, 3)
        for k in range(per_class):
            relative = f"{class_id:03d}.Bird_{class_id}/Bird_{class_id}_{k:04d}.jpg"
            noise = rng.integers(-60, 61, (size[1], size[0], 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            (folder / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / "images" / relative, "JPEG", quality=90)
            images.append(f"{len(images) + 1} {relative}")
            labels.append(f"{len(labels) + 1} {class_id}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return folder


def save_bninception_weights(path: Path, *, batch_counters: bool) -> Path:
    """pretrainedmodels' BN-Inception state dict (random init, nothing downloaded) saved like the real file.

    ``batch_counters=False`` leaves out the BatchNorm ``num_batches_tracked`` buffers, as in files saved
    before PyTorch 0.4.1.
    """
    import pretrainedmodels

    state = pretrainedmodels.bninception(num_classes=1000, pretrained=None).state_dict()
    if not batch_counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def cub_experiment(
    name: str,
    data_root: Path,
    weights: Path,
    *,
    embedding_size: int,
    data: dict[str, Any],
    train: dict[str, Any],
) -> dict[str, Any]:
    """An experiment on the base protocol (experiments/base.yaml) with one MS (paper preset) cell on CUB."""
    return {
        "name": name,
        "base": str(ROOT / "experiments" / "base.yaml"),
        "grid": {
            "datasets": ["cub"],
            "embedding_sizes": [embedding_size],
            "seeds": [0],
            "losses": [{"name": "ms", "preset": "paper"}],
            "variants": {"paper": {}},
        },
        "data": {"root": str(data_root), "strict_counts": False, **data},
        "model": {"weights": str(weights)},
        "schedule": {"milestones": []},  # the base's lr steps (1,200 and 2,400) lie beyond these short runs
        "train": train,
    }


# ----------------------------------------------------------------------------- steps in a subprocess


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(step: Any, iterations: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` over ``iterations`` calls after ``warmup`` ones (device synchronised)."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    _synchronize(device)
    return (time.perf_counter() - started) / iterations


def measure_model(
    batch: int, image_size: int, iterations: int, *, warmup: int = 10, device: str = "cuda"
) -> dict[str, Any]:
    """BN-Inception training (bf16 and fp32) and inference images/s on synthetic tensors already on
    ``device``."""
    import losses
    from harness.models import build_model, freeze_batchnorm_statistics

    where = torch.device(device)
    torch.backends.cudnn.benchmark = True
    model = build_model("bninception", 512, pretrained=False).to(where).to(memory_format=torch.channels_last)
    loss_fn = losses.build("ms", preset="paper").to(where)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-5, weight_decay=5e-4)
    gen = torch.Generator(device=where).manual_seed(0)
    images = (50 * torch.randn(batch, 3, image_size, image_size, generator=gen, device=where)).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.arange(batch // 5, device=where).repeat_interleave(5)
    out: dict[str, Any] = {"batch": batch, "image_size": image_size, "iterations": iterations}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):

        def train_step(dtype: torch.dtype | None = dtype) -> None:
            model.train()
            freeze_batchnorm_statistics(model)
            with torch.autocast(where.type, dtype=dtype, enabled=dtype is not None):
                emb = model(images)
            loss = loss_fn(emb.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        seconds = _timed_steps(train_step, iterations, warmup, where)
        out[f"train_{name}_images_per_s"] = batch / seconds
        if where.type == "cuda":
            out[f"train_{name}_peak_memory_gib"] = torch.cuda.max_memory_allocated(where) / 2**30
    big = images.repeat(4, 1, 1, 1)[:256].contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with torch.autocast(where.type, dtype=torch.bfloat16):
            model(big)

    out["inference_bf16_images_per_s"] = big.shape[0] / _timed_steps(infer, iterations, warmup, where)
    return out


def measure_eval(*, quick: bool = False, device: str = "cuda") -> dict[str, Any]:
    """``harness.evaluate`` on ``device`` at eval_speed.py's SOP and In-Shop sizes;
    ranks checked against the CPU."""
    sys.path.insert(0, str(BENCHMARKS))
    import eval_speed

    from harness.evaluate import evaluate, first_correct_rank

    out: dict[str, Any] = {}
    where = torch.device(device)
    for problem in eval_speed.problems(quick=quick):
        arrays = [torch.from_numpy(a) for a in eval_speed.make(problem, "random", 0)]
        on_gpu = [a.to(where) for a in arrays]
        gallery = {"gallery": on_gpu[2], "gallery_labels": on_gpu[3]} if problem.gallery else {}
        times = []
        for _ in range(2):  # the first run includes CUDA start-up costs
            _synchronize(where)
            started = time.perf_counter()
            values = evaluate(on_gpu[0], on_gpu[1], ks=problem.ks, metrics=("recall", "map_at_r"), **gallery)
            _synchronize(where)
            times.append(time.perf_counter() - started)
        row: dict[str, Any] = {
            "queries": problem.queries,
            "gallery": problem.gallery,
            "seconds": min(times),
            "first_seconds": times[0],
            "values": values,
        }
        if problem.gallery:  # ranks on the CPU (seconds there) must be the same query by query
            cpu_gallery = {"gallery": arrays[2], "gallery_labels": arrays[3]}
            gpu_ranks = first_correct_rank(*on_gpu[:2], **gallery).cpu()
            cpu_ranks = first_correct_rank(*arrays[:2], **cpu_gallery)
            row["queries_ranked_differently_than_on_cpu"] = int((gpu_ranks != cpu_ranks).sum())
        out[problem.name] = row
    return out


# ----------------------------------------------------------------------------- the driver


@dataclass
class Step:
    """What one step ended with."""

    name: str
    status: str  # ok, failed, timeout, skipped
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    output_tail: str = ""


def run_command(name: str, command: list[str], timeout: float, cwd: Path = ROOT) -> tuple[Step, str]:
    """Run ``command`` in its own process group; on timeout the whole group is killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        step = Step(name, "timeout", time.perf_counter() - started, reason=f"stopped after {timeout:.0f} s")
        return step, output
    seconds = time.perf_counter() - started
    if process.returncode:
        return Step(name, "failed", seconds, reason=f"exit code {process.returncode}"), output
    return Step(name, "ok", seconds), output


def json_step(name: str, timeout: float, *extra: str) -> Step:
    """One of this script's own steps (``--step NAME``), which prints its figures as a JSON last line."""
    step, output = run_command(
        name, [sys.executable, str(Path(__file__).resolve()), "--step", name, *extra], timeout
    )
    if step.status == "ok":
        step.figures = json.loads(output.strip().splitlines()[-1])
    else:
        step.output_tail = output[-3000:]
    return step


def loss_step(
    timeout: float, *, device: str = "cuda", sizes: tuple[int, ...] = (80, 256, 1000, 4000)
) -> Step:
    """benchmarks/loss_speed.py on ``device``; its table rows become figures (milliseconds per m)."""
    command = [
        sys.executable,
        str(BENCHMARKS / "loss_speed.py"),
        "--device",
        device,
        "--budget",
        "2",
        "--reference-max-m",
        "1000",
        "--sizes",
        *map(str, sizes),
    ]
    step, output = run_command("loss", command, timeout)
    lines = [line for line in output.splitlines() if line.startswith("|")]
    if step.status == "ok" and len(lines) > 2:
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        step.figures = {
            "rows": [
                dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
                for line in lines[2:]
            ]
        }
    step.output_tail = output[-3000:]
    return step


def trainer_step(timeout: float) -> Step:
    """benchmarks/train_speed.py with BN-Inception on synthetic images: the harness trainer against a bare
    loop."""
    workers = str(min(8, os.cpu_count() or 1))
    command = [
        sys.executable,
        str(BENCHMARKS / "train_speed.py"),
        "--dataset",
        "synthetic",
        "--backbone",
        "bninception",
        "--batch",
        "80",
        "--image-size",
        "224",
        "--iterations",
        "60",
        "--window",
        "10",
        "--warmup",
        "20",
        "--repeats",
        "1",
        "--workers",
        workers,
    ]
    step, output = run_command("trainer", command, timeout)
    for key, pattern in (
        ("bare_images_per_s", r"bare loop\s*:\s*([\d.]+)"),
        ("harness_images_per_s", r"harness trainer:\s*([\d.]+)"),
    ):
        found = re.search(pattern, output)
        if found:
            step.figures[key] = float(found.group(1))
    step.output_tail = output[-3000:]
    return step


@dataclass(frozen=True)
class RunScale:
    """The size of the ``run`` step: its JPEG tree (classes, images, pixels) and its training run."""

    train_classes: int = 25  # 20 train + 5 validation classes (val_fraction 0.2)
    test_classes: int = 10
    per_class: int = 8
    jpeg_size: tuple[int, int] = (500, 375)  # a typical CUB photo
    classes_per_batch: int = 16  # x 5 = batch 80
    iterations: int = 40


def harness_run_step(
    name: str, timeout: float, processes: int, folder: Path, scale: RunScale = RunScale()
) -> Step:
    """``python -m harness.run`` (under torchrun when ``processes > 1``) on a CUB JPEG tree at 224 px."""
    data_root, weights = folder / "data", folder / BNINCEPTION_FILE
    if not (data_root / "CUB_200_2011").is_dir():
        write_cub_tree(
            data_root,
            train_classes=scale.train_classes,
            test_classes=scale.test_classes,
            per_class=scale.per_class,
            size=scale.jpeg_size,
        )
        save_bninception_weights(weights, batch_counters=True)
    experiment = cub_experiment(
        f"gpu-check-{name}",
        data_root,
        weights,
        embedding_size=512,
        data={
            "workers": min(8, (os.cpu_count() or 2) // processes),
            "classes_per_batch": scale.classes_per_batch,
            # the paper's M = 5, unless a shrunk tree's classes are smaller (--check refuses M above them)
            "samples_per_class": min(5, scale.per_class),
        },
        train={"iterations": scale.iterations, "eval_every": scale.iterations, "log_every": 10},
    )
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(experiment))  # JSON is YAML
    launcher = [sys.executable, "-m", "harness.run"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "harness.run",
        ]
    step, output = run_command(
        name, [*launcher, str(path), "--results", str(folder / "results"), "--quiet", "--no-report"], timeout
    )
    finals = list((folder / "results" / experiment["name"] / "cells").glob("*/final.json"))
    if finals:
        final = json.loads(finals[0].read_text())
        test = final.get("metrics", {}).get("final", {}).get("test", {})
        step.figures = {
            "processes": processes,
            "cell_status": final["status"],
            "reason": final.get("reason"),
            "world_size": final.get("world_size"),
            "device": final.get("device"),
            **final.get("timings", {}),
            "test_recall@1": test.get("recall@1"),
        }
    step.output_tail = output[-3000:]
    return step


def summary_lines(steps: list[Step]) -> list[str]:
    """The printed summary: one line per step with its main figures."""
    lines = []
    for step in steps:
        shown = {k: v for k, v in step.figures.items() if isinstance(v, int | float | str)}
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        lines.append(f"{step.name:9s} {step.status:8s} {step.seconds:6.1f} s  {text or step.reason}")
        if step.name == "loss":
            lines += [
                f"          m={r.get('m')}: ms {r.get('ms (ms)')} ms, PML {r.get('PML (ms)')} ms, "
                f"matmuls {r.get('3 matmuls (ms)')} ms"
                for r in step.figures.get("rows", [])
            ]
        if step.name == "eval":
            lines += [
                f"          {k}: {v['seconds']:.2f} s on GPU, recall@1 {v['values']['recall@1']:.4f}"
                for k, v in step.figures.items()
            ]
        if step.status in ("failed", "timeout") and step.output_tail:
            lines.append("          " + step.output_tail.strip().splitlines()[-1][:300])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])  # the first paragraph
    parser.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together (< 480)")
    parser.add_argument("--only", nargs="+", choices=list(STEP_TIMEOUTS), help="run only these steps")
    parser.add_argument("--step", choices=("model", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=40, help="timed iterations of the model step")
    args = parser.parse_args(argv)
    if args.step == "model":
        print(json.dumps(measure_model(80, 224, args.iterations)))
        return 0
    if args.step == "eval":
        print(json.dumps(measure_eval()))
        return 0

    record: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    if not torch.cuda.is_available():
        print(NO_GPU)
        if args.out:
            args.out.write_text(json.dumps({**record, "gpu": None, "result": NO_GPU}, indent=2))
        return 0
    gpus = torch.cuda.device_count()
    record.update(gpu=torch.cuda.get_device_name(0), gpus=gpus, cuda=torch.version.cuda)
    print(
        f"# gpu_check {record['date']}: {gpus} x {record['gpu']}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, {os.cpu_count()} CPUs, budget {args.budget:.0f} s",
        flush=True,
    )
    deadline = time.perf_counter() + args.budget
    wanted = args.only or list(STEP_TIMEOUTS)
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in wanted:
            left = deadline - time.perf_counter()
            timeout = min(STEP_TIMEOUTS[name], left - 5)
            if name == "torchrun" and gpus < 2:
                step = Step(name, "skipped", reason=f"{gpus} GPU visible; a two-process run needs 2")
            elif timeout < 20:
                step = Step(name, "skipped", reason=f"overall budget spent ({left:.0f} s left)")
            elif name in ("model", "eval"):
                step = json_step(name, timeout, "--iterations", str(args.iterations))
            elif name == "loss":
                step = loss_step(timeout)
            elif name == "trainer":
                step = trainer_step(timeout)
            else:
                step = harness_run_step(name, timeout, 2 if name == "torchrun" else 1, Path(tmp))
            steps.append(step)
            print(summary_lines([step])[0], flush=True)
    print("\n# summary")
    print("\n".join(summary_lines(steps)))
    if args.out:
        record["steps"] = {
            s.name: {
                "status": s.status,
                "seconds": s.seconds,
                "reason": s.reason,
                "figures": s.figures,
                "output_tail": s.output_tail,
            }
            for s in steps
        }
        args.out.write_text(json.dumps(record, indent=2))
        print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
