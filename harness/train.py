"""The one training loop: trains and evaluates one grid cell, with checkpoints, resume and selection.

:func:`train_cell` is the same for every loss, dataset and backbone. It evaluates on the validation
split every ``train.eval_every`` iterations, keeps the weights that score best there (or on the test
set, only when the config says ``select_on: test``), checkpoints atomically, resumes from the last
checkpoint, and at the end evaluates the test set with both the final and the selected weights.
A non-finite loss or gradient ends the cell with status ``failed`` and the reason.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.builders import build_model, build_optimizer, build_schedule, load_splits
from harness.config import CellConfig
from harness.distributed import DistContext, broadcast_flag, gather_rows, gather_with_grad
from harness.errors import UserError
from harness.models import freeze_batchnorm_statistics
from harness.results import (
    CellPaths,
    atomic_save_npz,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    environment,
    now,
)

TRAIN_LOG_COLUMNS = (
    "iteration", "loss", "pos_pairs", "neg_pairs", "pos_weight_mean", "neg_weight_mean", "lr", "images_per_s",
)  # fmt: skip
EVAL_COLUMNS = ("iteration", "split", "metric", "value")

EvalCallback = Callable[[int, dict[str, float]], None]


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


@dataclass
class CellOutcome:
    """What one cell ended with."""

    cell_id: str
    status: str
    reason: str | None = None
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: float = 0.0


def pick_device(ctx: DistContext | None = None) -> torch.device:
    """The GPU when one is present (this rank's, under torchrun), the CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank if ctx else torch.cuda.current_device())
    return torch.device("cpu")


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: ``auto`` is bf16 on GPU and off on CPU."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if setting == "fp16" else torch.bfloat16


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed Python, NumPy and torch; on GPU, ask for deterministic kernels (CPU kernels here already are)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":  # the switch imports torch's compiler stack (seconds); the CPU does not need it
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not deterministic


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    amp: torch.dtype | None,
    ctx: DistContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (float32, CPU) and labels of a whole dataset, in dataset order; split across ranks."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    indices = list(range(len(dataset)))
    if ctx is not None:
        indices = indices[ctx.rank :: ctx.world_size]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    chunks = []
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            chunks.append(net(images).float())
    dim = net.head.out_features
    local = torch.cat(chunks) if chunks else torch.zeros((0, dim), device=device)
    if ctx is not None:
        gathered = gather_rows(local, ctx.world_size)
        order = torch.tensor([i for r in range(ctx.world_size) for i in range(r, len(dataset), ctx.world_size)])
        local = torch.empty_like(gathered)
        local[order] = gathered
    net.train(was_training)
    return local.cpu(), torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)


def evaluate_split(
    model: nn.Module, splits: Any, split: str, cfg: CellConfig, device: torch.device, amp: torch.dtype | None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Metrics of one split: ``val`` (leave-one-out) or ``test`` (leave-one-out or query -> gallery)."""
    from harness.evaluate import evaluate

    opts = {"device": device, "batch_size": cfg.evaluate.batch_size, "workers": cfg.data.workers, "amp": amp,
            "ctx": ctx}  # fmt: skip
    ks = list(cfg.evaluate.ks or splits.default_ks)
    metrics = tuple(cfg.evaluate.metrics)
    if split == "test" and splits.eval_mode == "query_gallery":
        q, ql = embed(model, splits.query, **opts)
        g, gl = embed(model, splits.gallery, **opts)
        return evaluate(q, ql, ks=ks, metrics=metrics, gallery=g, gallery_labels=gl)
    dataset = splits.val if split == "val" else splits.test
    emb, labels = embed(model, dataset, **opts)
    return evaluate(emb, labels, ks=ks, metrics=metrics)


# ------------------------------------------------------------------------------------------ progress


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, start: int, label: str, enabled: bool, out: Any = None) -> None:
        self.out = out or sys.stderr
        self.label = label
        self.total = total
        self.enabled = enabled
        self.bar = None
        self.every = max(1, total // 10)
        if enabled and self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, file=self.out, dynamic_ncols=True)

    def update(self, iteration: int, info: dict[str, str]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(info, refresh=False)
        elif iteration % self.every == 0 or iteration == self.total:
            fields = " ".join(f"{k}={v}" for k, v in info.items())
            print(f"[{self.label}] it {iteration}/{self.total} {fields}", file=self.out, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"[{self.label}] {text}", file=self.out)
        else:
            print(f"[{self.label}] {text}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ training


def training_batches(splits: Any, cfg: CellConfig, start: int, ctx: DistContext | None) -> Iterator[Any]:
    """Training batches from iteration ``start`` on; under torchrun, this rank's share of each batch."""
    from harness.data import MPerClassBatchSampler

    sampler = MPerClassBatchSampler(
        splits.train.labels, cfg.data.classes_per_batch, cfg.data.samples_per_class, seed=cfg.seed, start=start
    )

    class _Share:
        def __iter__(self) -> Iterator[list[int]]:
            for batch in sampler:
                yield batch if ctx is None else batch[ctx.rank :: ctx.world_size]

    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
    loader = torch.utils.data.DataLoader(
        splits.train,
        batch_sampler=_Share(),
        num_workers=cfg.data.workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def _grad_norm(parameters: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _collect_pair_weights(
    model: nn.Module, loss_fn: nn.Module, splits: Any, cfg: CellConfig, device: torch.device, ctx: DistContext | None
) -> dict[str, np.ndarray]:
    """The weights ``loss_fn`` gives the selected pairs of a few training batches (the GPW view)."""
    pos, neg = [], []
    net = _unwrap(model)
    net.eval()
    batches = training_batches(splits, cfg, start=cfg.train.iterations, ctx=ctx)
    with torch.no_grad():
        for _ in range(cfg.train.pair_weight_batches):
            images, labels = next(batches)
            emb = net(images.to(device))
            labels = labels.to(device)
            if ctx is not None:
                emb, labels = gather_rows(emb, ctx.world_size), gather_rows(labels, ctx.world_size)
            w_pos, w_neg = loss_fn.pair_weights(emb.float(), labels)
            pos.append(w_pos[w_pos > 0].float().cpu().numpy())
            neg.append(w_neg[w_neg > 0].float().cpu().numpy())
    empty = np.zeros(0, dtype=np.float32)
    return {"pos": np.concatenate(pos) if pos else empty, "neg": np.concatenate(neg) if neg else empty}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_logs(paths: CellPaths, log: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    atomic_write_csv(paths.train_log, log, TRAIN_LOG_COLUMNS)
    atomic_write_csv(paths.evals, evals, EVAL_COLUMNS)


def _finite_or_fail(value: torch.Tensor, what: str, iteration: int) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"non-finite {what} ({value.item()}) at iteration {iteration}")


def train_cell(
    cfg: CellConfig,
    paths: CellPaths,
    *,
    on_eval: EvalCallback | None = None,
    progress: bool = True,
    ctx: DistContext | None = None,
    evaluate_test: bool = True,
) -> CellOutcome:
    """Train and evaluate one cell, resuming from ``paths.checkpoint`` when it exists.

    ``on_eval(iteration, metrics)`` is called after each evaluation on the selection split (it may
    raise, e.g. ``optuna.TrialPruned``, which propagates). ``evaluate_test=False`` never touches the
    test set (hyperparameter search): the final report then holds validation metrics only.
    """
    started = time.perf_counter()
    main = ctx is None or ctx.is_main
    device = pick_device(ctx)
    amp = autocast_dtype(cfg.train.amp, device)
    seed_everything(cfg.seed, cfg.train.deterministic, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    splits = load_splits(cfg)
    if not evaluate_test and cfg.train.select_on == "test":
        raise UserError("train.select_on: 'test' is not allowed here (the test set is not looked at); use 'val'")
    if cfg.train.select_on == "val" and splits.val is None:
        raise UserError("train.select_on: 'val' needs a validation split; set data.val_fraction > 0 "
                        "(or select_on: test, as the official code does)")  # fmt: skip
    in_channels = int(splits.train[0][0].shape[0])
    model = build_model(cfg, in_channels).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = cfg.loss.build().to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_schedule(cfg, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    log: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    best: dict[str, Any] = {"iteration": None, "value": -math.inf, "state": None}
    start = 0
    elapsed_before = 0.0
    if paths.checkpoint.is_file():
        ckpt = torch.load(paths.checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        log, evals, best = ckpt["train_log"], ckpt["evals"], ckpt["best"]
        start, elapsed_before = ckpt["iteration"], ckpt["elapsed"]

    if main:
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(paths.config, {"cell_id": cfg.cell_id, **cfg.model_dump(mode="json")})
        atomic_write_json(paths.env, {**environment(device), "world_size": ctx.world_size if ctx else 1})
        atomic_write_json(paths.status, {"status": "running", "reason": None, "started": now(),
                                         "resumed_from": start or None})  # fmt: skip

    if ctx is not None:
        if not cfg.model.freeze_bn and device.type == "cuda":  # batch statistics over the whole P x M batch
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    net = _unwrap(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    bar = Progress(cfg.train.iterations, start, cfg.cell_id, enabled=progress and main)
    bar.message(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
                + (f", autocast {amp}" if amp else "") + (f", resuming at iteration {start}" if start else ""))  # fmt: skip

    every_ckpt = cfg.train.checkpoint_every or cfg.train.eval_every
    select_split = cfg.train.select_on
    batches = training_batches(splits, cfg, start, ctx)
    window_start, window_images = time.perf_counter(), 0
    status, reason = "finished", None
    try:
        for iteration in range(start + 1, cfg.train.iterations + 1):
            images, labels = next(batches)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if device.type == "cuda" and cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            model.train()
            if cfg.model.freeze_bn:
                freeze_batchnorm_statistics(model)
            with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                emb = model(images)
            if ctx is not None:
                emb, labels = gather_with_grad(emb), gather_rows(labels, ctx.world_size)
            loss = loss_fn(emb.float(), labels)
            _finite_or_fail(loss.detach(), "loss", iteration)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if amp is not torch.float16:
                _finite_or_fail(_grad_norm(parameters), "gradient norm", iteration)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            window_images += labels.shape[0]

            if iteration % cfg.train.log_every == 0 or iteration == cfg.train.iterations:
                seconds = time.perf_counter() - window_start
                stats = getattr(loss_fn, "last_stats", {})
                row = {"iteration": iteration, "loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()},
                       "lr": optimizer.param_groups[0]["lr"], "images_per_s": window_images / max(seconds, 1e-9)}  # fmt: skip
                log.append(row)
                bar.update(iteration, {"loss": f"{row['loss']:.4f}", "pos": f"{row.get('pos_pairs', 0):.0f}",
                                       "neg": f"{row.get('neg_pairs', 0):.0f}", "img/s": f"{row['images_per_s']:.0f}"})  # fmt: skip
                window_start, window_images = time.perf_counter(), 0
            elif bar.bar is not None:
                bar.update(iteration, {})

            if iteration % cfg.train.eval_every == 0 or iteration == cfg.train.iterations:
                eval_started = time.perf_counter()
                values = evaluate_split(model, splits, select_split, cfg, device, amp, ctx)
                evals.extend({"iteration": iteration, "split": select_split, "metric": k, "value": v}
                             for k, v in values.items())  # fmt: skip
                if cfg.train.select_metric not in values:
                    raise UserError(f"train.select_metric: {cfg.train.select_metric!r} is not measured; "
                                    f"expected one of {sorted(values)}")  # fmt: skip
                score = values[cfg.train.select_metric]
                if score > best["value"]:
                    best = {"iteration": iteration, "value": score, "state": _state(model)}
                bar.message(f"it {iteration}: {select_split} {cfg.train.select_metric} = {score:.4f} "
                            f"(best {best['value']:.4f} at {best['iteration']})")  # fmt: skip
                if on_eval is not None:
                    on_eval(iteration, values)
                window_start += time.perf_counter() - eval_started  # images/s counts training time only

            if main and (iteration % every_ckpt == 0) and iteration < cfg.train.iterations:
                atomic_torch_save(paths.checkpoint, {
                    "iteration": iteration, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                    "train_log": log, "evals": evals, "best": best,
                    "elapsed": elapsed_before + time.perf_counter() - started,
                })  # fmt: skip
                _write_logs(paths, log, evals)
    except NonFiniteError as err:
        status, reason = "failed", str(err)
    finally:
        bar.close()
    if broadcast_flag(status == "failed", ctx) and status != "failed":
        status, reason = "failed", "another rank stopped on a non-finite value"

    train_seconds = elapsed_before + time.perf_counter() - started
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    if status == "finished":
        eval_started = time.perf_counter()
        final_state = _state(model)
        splits_to_report = (["test"] if evaluate_test else []) + (["val"] if splits.val is not None else [])
        metrics["final"] = {s: evaluate_split(model, splits, s, cfg, device, amp, ctx) for s in splits_to_report}
        if best["state"] is not None and best["iteration"] != cfg.train.iterations:
            net.load_state_dict(best["state"])
            metrics["selected"] = {s: evaluate_split(model, splits, s, cfg, device, amp, ctx) for s in splits_to_report}
            net.load_state_dict(final_state)
        else:
            metrics["selected"] = metrics["final"]
        pair_weights = _collect_pair_weights(model, loss_fn, splits, cfg, device, ctx)
        eval_seconds = time.perf_counter() - eval_started
        if main:
            atomic_save_npz(paths.pair_weights, pair_weights)
            if cfg.train.keep_weights:
                atomic_torch_save(paths.weights("final"), final_state)
                atomic_torch_save(paths.weights("selected"), best["state"] or final_state)
    else:
        eval_seconds = 0.0

    outcome = CellOutcome(cfg.cell_id, status, reason, metrics, train_seconds)
    if main:
        _write_logs(paths, log, evals)
        images_per_s = [row["images_per_s"] for row in log]
        atomic_write_json(paths.final, {
            "cell_id": cfg.cell_id, "status": status, "reason": reason, "select_on": select_split,
            "select_metric": cfg.train.select_metric, "selected_iteration": best["iteration"],
            "selected_value": best["value"] if best["iteration"] is not None else None,
            "iterations": cfg.train.iterations, "metrics": metrics,
            "timings": {"train_seconds": train_seconds, "final_eval_seconds": eval_seconds,
                        "median_images_per_s": float(np.median(images_per_s)) if images_per_s else None},
            "device": str(device), "world_size": ctx.world_size if ctx else 1, "finished": now(),
        })  # fmt: skip
        atomic_write_json(paths.status, {"status": status, "reason": reason, "finished": now()})
        paths.checkpoint.unlink(missing_ok=True)
    return outcome

