"""The one training loop: trains and evaluates one grid cell, with checkpoints, resume and selection.

:func:`train_cell` is the same for every loss, dataset and backbone. It evaluates on the validation
split every ``train.eval_every`` iterations, keeps the weights that score best there (or on the test
set, only when the config says ``select_on: test``; ``select_on: final`` evaluates nothing during training
and reports the final weights as the selected ones), checkpoints atomically, resumes from the last
checkpoint, and at the end evaluates the test set with both the final and the selected weights.
A non-finite loss or gradient ends the cell with status ``failed`` and the reason. The records it
writes (status.json, env.json, final.json) are those of :mod:`harness.records`.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Never, TextIO, cast

import numpy as np
import torch
from torch import nn

from harness.builders import build_model, build_optimizer, build_schedule, load_splits
from harness.config import CellConfig
from harness.data import CachedImageDataset, DatasetSplits, LabelledDataset, build_batch_sampler
from harness.distributed import DistContext, broadcast_flag, gather_rows, gather_with_grad
from harness.errors import UserError
from harness.files import atomic_save_npz, atomic_torch_save, atomic_write_csv, atomic_write_json
from harness.models import EmbeddingModel, batchnorm_layers, freeze_batchnorm_statistics
from harness.records import CellOutcome, CellStatus, FinalRecord, Metrics, StatusRecord, Timings, write_record
from harness.results import CellPaths, environment, load_checkpoint, now
from harness.tracking import Loggers, open_loggers

if TYPE_CHECKING:
    from tqdm import tqdm

    from losses import GPWLoss

TRAIN_LOG_COLUMNS = (
    "iteration",
    "loss",
    "pos_pairs",
    "neg_pairs",
    "pos_weight_mean",
    "neg_weight_mean",
    "lr",
    "images_per_s",
)
EVAL_COLUMNS = ("iteration", "split", "metric", "value")

EvalCallback = Callable[[int, dict[str, float]], None]
NO_BATCHNORM = "; note: model.freeze_bn has no effect, the model has no BatchNorm layer (e.g. a ViT)"


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


CHECKPOINT_AND_STOP = threading.Event()
"""Set (by a scheduler's signal handler) to make :func:`train_cell` checkpoint after its current iteration
and raise :class:`CheckpointedStop`; training the cell again resumes exactly there."""


class CheckpointedStop(BaseException):
    """:func:`train_cell` saved a checkpoint and stopped because :data:`CHECKPOINT_AND_STOP` was set."""


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


def _unwrap(model: nn.Module) -> EmbeddingModel:
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return cast(EmbeddingModel, net)  # the trainer's model is an EmbeddingModel, maybe inside DDP


# --------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed(
    model: nn.Module,
    dataset: LabelledDataset,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    amp: torch.dtype | None,
    ctx: DistContext | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (float32, CPU) and labels of a whole dataset, in dataset order; split across ranks.
    ``channels_last``: feed image batches in that memory format (the trainer's models are in it)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    indices = list(range(len(dataset)))
    if ctx is not None:
        indices = indices[ctx.rank :: ctx.world_size]
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]] = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),  # type: ignore[arg-type]  # torch takes any map-style dataset
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )
    chunks = []
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            chunks.append(net(images).float())
    dim = net.head.out_features
    local = torch.cat(chunks) if chunks else torch.zeros((0, dim), device=device)
    if ctx is not None:
        gathered = gather_rows(local, ctx.world_size)
        order = torch.tensor(
            [i for r in range(ctx.world_size) for i in range(r, len(dataset), ctx.world_size)]
        )
        local = torch.empty_like(gathered)
        local[order] = gathered
    net.train(was_training)
    return local.cpu(), torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)


def evaluate_split(
    model: nn.Module,
    splits: DatasetSplits,
    split: str,
    cfg: CellConfig,
    device: torch.device,
    amp: torch.dtype | None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Metrics of one split: ``val`` (leave-one-out) or ``test`` (leave-one-out or query -> gallery)."""
    from harness.evaluate import evaluate

    opts: dict[str, Any] = {
        "device": device,
        "batch_size": cfg.evaluate.batch_size,
        "workers": cfg.data.workers,
        "amp": amp,
        "ctx": ctx,
        "channels_last": cfg.train.channels_last,
    }
    ks = list(cfg.evaluate.ks or splits.default_ks)
    metrics = tuple(cfg.evaluate.metrics)
    if split == "test" and splits.eval_mode == "query_gallery":
        assert splits.query is not None and splits.gallery is not None  # DatasetSplits checks its eval_mode
        q, ql = embed(model, splits.query, **opts)
        g, gl = embed(model, splits.gallery, **opts)
        return evaluate(q, ql, ks=ks, metrics=metrics, gallery=g, gallery_labels=gl)
    dataset = splits.val if split == "val" else splits.test
    assert dataset is not None  # the callers check that the split exists
    emb, labels = embed(model, dataset, **opts)
    return evaluate(emb, labels, ks=ks, metrics=metrics)


# ------------------------------------------------------------------------------------------ progress


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, start: int, label: str, enabled: bool, out: TextIO | None = None) -> None:
        self.out, self.label, self.total, self.enabled = out or sys.stderr, label, total, enabled
        self.bar: tqdm[Never] | None = None
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
        if self.enabled and self.bar is not None:
            self.bar.write(f"[{self.label}] {text}", file=self.out)
        elif self.enabled:
            print(f"[{self.label}] {text}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ training


def training_batches(
    splits: DatasetSplits,
    cfg: CellConfig,
    start: int,
    ctx: DistContext | None,
    normalise_on: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches from iteration ``start`` on; under torchrun, this rank's share of each batch.

    ``normalise_on`` (the trainer passes its GPU): a training split that can hand uint8 batches (the
    decoded cache's fast crops) does so, and they are converted and normalised there, the same values
    as in the workers; the workers then copy a quarter of the bytes and skip the float work."""
    train = splits.train
    if normalise_on is not None and isinstance(train, CachedImageDataset) and train.torch_crop is not None:
        train = copy.copy(train)
        train.uint8_batches = True
        return _normalised(_loader_batches(train, cfg, start, ctx), train, normalise_on)
    return _loader_batches(train, cfg, start, ctx)


def _normalised(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], train: CachedImageDataset, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels in batches:
        yield train.finish(images.to(device, non_blocking=True)), labels


def _loader_batches(
    train: LabelledDataset, cfg: CellConfig, start: int, ctx: DistContext | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    sampler = build_batch_sampler(
        cfg.data.sampler,
        train.labels,
        cfg.data.classes_per_batch,
        cfg.data.samples_per_class,
        seed=cfg.seed,
        start=start,
    )

    class _Share:
        def __iter__(self) -> Iterator[list[int]]:
            for batch in sampler:
                yield batch if ctx is None else batch[ctx.rank :: ctx.world_size]

    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]] = torch.utils.data.DataLoader(
        train,  # type: ignore[arg-type]  # torch takes any map-style dataset
        batch_sampler=_Share(),
        num_workers=cfg.data.workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def _grad_norm(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _collect_pair_weights(
    model: nn.Module,
    loss_fn: GPWLoss,
    splits: DatasetSplits,
    cfg: CellConfig,
    device: torch.device,
    ctx: DistContext | None,
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


def _finite_or_fail(value: torch.Tensor, what: str, iteration: int) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"non-finite {what} ({value.item()}) at iteration {iteration}")


def _due(iteration: int, every: int, last: int) -> bool:
    return iteration % every == 0 or iteration == last


def _check_selection(cfg: CellConfig, splits: DatasetSplits, evaluate_test: bool) -> None:
    """The selection split must exist and may be the test set only where the test set may be looked at."""
    if not evaluate_test and cfg.train.select_on == "test":
        raise UserError(
            "train.select_on: 'test' is not allowed here (the test set is not looked at); use 'val'"
        )
    if cfg.train.select_on == "val" and splits.val is None:
        raise UserError(
            "train.select_on: 'val' needs a validation split; set data.val_fraction > 0 "
            "(or select_on: final, no selection)"
        )


CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "train_log",
    "evals",
    "best",
    "iteration",
    "elapsed",
)
"""What a checkpoint holds (written by :meth:`_CellRun.checkpoint`, read back by :meth:`_CellRun.restore`)."""


class _CellRun:
    """One cell in training: what it is built from, what it has logged, and the steps of
    :func:`train_cell`."""

    def __init__(
        self,
        cfg: CellConfig,
        paths: CellPaths,
        ctx: DistContext | None,
        splits: DatasetSplits | None,
        evaluate_test: bool,
    ) -> None:
        self.cfg, self.paths, self.ctx, self.evaluate_test = cfg, paths, ctx, evaluate_test
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.main, self.world_size = ctx is None or ctx.is_main, ctx.world_size if ctx else 1
        self.device = pick_device(ctx)
        self.amp = autocast_dtype(cfg.train.amp, self.device)
        seed_everything(cfg.seed, cfg.train.deterministic, self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.splits = load_splits(cfg) if splits is None else splits
        _check_selection(cfg, self.splits, evaluate_test)
        model = build_model(cfg, in_channels=int(self.splits.train[0][0].shape[0])).to(self.device)
        if cfg.train.channels_last:  # faster convolutions on GPU and on CPU (oneDNN) alike
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        self.loss_fn = cfg.loss.build().to(self.device)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_schedule(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.log: list[dict[str, Any]] = []  # train_log.csv rows
        self.evals: list[dict[str, Any]] = []  # evals.csv rows
        self.best: dict[str, Any] = {"iteration": None, "value": -math.inf, "state": None}
        self.start, self.elapsed_before = 0, 0.0
        self.window_start, self.window_images = 0.0, 0  # images/s over the current log window
        self.tracker = Loggers()  # live logging (harness.tracking): the main rank's, from start_tracking

    def restore(self) -> None:
        """Resume from the cell's checkpoint, when there is one: weights, optimiser, RNG, logs, best so
        far."""
        if not self.paths.checkpoint.is_file():
            return
        ckpt = load_checkpoint(self.paths.checkpoint, CHECKPOINT_KEYS)  # a damaged file: one line, delete it
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        self.log, self.evals, self.best = ckpt["train_log"], ckpt["evals"], ckpt["best"]
        self.start, self.elapsed_before = ckpt["iteration"], ckpt["elapsed"]

    def record_start(self) -> None:
        """Write the cell's config.json, env.json and a ``running`` status.json."""
        if self.main:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.paths.config, self.cfg.record())
            write_record(self.paths.env, environment(self.device, self.world_size))
            write_record(
                self.paths.status,
                StatusRecord(
                    status=CellStatus.RUNNING, reason=None, started=now(), resumed_from=self.start or None
                ),
            )

    def start_tracking(self) -> None:
        """Open the live loggers of ``tracking.loggers`` (main rank), continuing the cell's run when it
        resumes."""
        if self.main:
            self.tracker = open_loggers(self.cfg, self.paths, first_step=self.start + 1)

    def distribute(self) -> None:
        """Under torchrun, wrap the model in DistributedDataParallel (synchronised BN where BN trains on
        GPU)."""
        if self.ctx is not None:
            if (
                not self.cfg.model.freeze_bn and self.device.type == "cuda"
            ):  # statistics over the whole P x M batch
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]

    def describe(self) -> str:
        """The device line the progress output starts with."""
        device, amp = self.device, self.amp
        return (
            f"device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + (f", autocast {amp}" if amp else "")
            + (f", resuming at iteration {self.start}" if self.start else "")
            + (NO_BATCHNORM if self.cfg.model.freeze_bn and not batchnorm_layers(self.model) else "")
        )

    def step(self, iteration: int, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One update on one batch; returns the loss (detached). A non-finite loss or gradient raises."""
        device, amp = self.device, self.amp
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if self.cfg.train.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        self.model.train()
        if self.cfg.model.freeze_bn:
            freeze_batchnorm_statistics(self.model)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            emb = self.model(images)
        if self.ctx is not None:
            emb, labels = gather_with_grad(emb), gather_rows(labels, self.ctx.world_size)
        loss = self.loss_fn(emb.float(), labels)
        _finite_or_fail(loss.detach(), "loss", iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if amp is not torch.float16:
            _finite_or_fail(_grad_norm(self.parameters), "gradient norm", iteration)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.window_images += labels.shape[0]
        return loss.detach()

    def log_step(self, iteration: int, loss: torch.Tensor, bar: Progress) -> None:
        """Every ``train.log_every`` iterations: a train_log row (loss, pair statistics, lr, images/s)."""
        if not _due(iteration, self.cfg.train.log_every, self.cfg.train.iterations):
            if bar.bar is not None:
                bar.update(iteration, {})
            return
        seconds = time.perf_counter() - self.window_start
        stats = getattr(self.loss_fn, "last_stats", {})
        row = {
            "iteration": iteration,
            "loss": float(loss),
            **{k: float(v) for k, v in stats.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": self.window_images / max(seconds, 1e-9),
        }
        self.log.append(row)
        self.tracker.log_scalars(iteration, {f"train/{k}": v for k, v in row.items() if k != "iteration"})
        bar.update(
            iteration,
            {
                "loss": f"{row['loss']:.4f}",
                "pos": f"{row.get('pos_pairs', 0):.0f}",
                "neg": f"{row.get('neg_pairs', 0):.0f}",
                "img/s": f"{row['images_per_s']:.0f}",
            },
        )
        self.window_start, self.window_images = time.perf_counter(), 0

    def evaluate_and_select(self, iteration: int, on_eval: EvalCallback | None, bar: Progress) -> None:
        """Every ``train.eval_every`` iterations: evaluate the selection split, keep the best weights so
        far."""
        cfg = self.cfg
        if cfg.train.select_on == "final" or not _due(iteration, cfg.train.eval_every, cfg.train.iterations):
            return  # select_on final: no selection, nothing to evaluate before the end
        eval_started = time.perf_counter()
        split, metric = cfg.train.select_on, cfg.train.select_metric
        values = evaluate_split(self.model, self.splits, split, cfg, self.device, self.amp, self.ctx)
        self.evals.extend(
            {"iteration": iteration, "split": split, "metric": k, "value": v} for k, v in values.items()
        )
        self.tracker.log_scalars(iteration, {f"{split}/{k}": v for k, v in values.items()})
        if metric not in values:
            raise UserError(
                f"train.select_metric: {metric!r} is not measured; expected one of {sorted(values)}"
            )
        if values[metric] > self.best["value"]:
            self.best = {"iteration": iteration, "value": values[metric], "state": _state(self.model)}
        bar.message(
            f"it {iteration}: {split} {metric} = {values[metric]:.4f} "
            f"(best {self.best['value']:.4f} at {self.best['iteration']})"
        )
        if on_eval is not None:
            on_eval(iteration, values)
        self.window_start += time.perf_counter() - eval_started  # images/s counts training time only

    def checkpoint(self, iteration: int, now: bool = False) -> None:
        """Every ``train.checkpoint_every`` (default ``eval_every``) iterations before the last: save it all.

        ``now`` saves at this iteration whatever its number (a scheduler asked the cell to stop)."""
        every = self.cfg.train.checkpoint_every or self.cfg.train.eval_every
        if not self.main or (iteration % every != 0 and not now) or iteration >= self.cfg.train.iterations:
            return
        atomic_torch_save(
            self.paths.checkpoint,
            {
                "iteration": iteration,
                "model": _unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": _rng_state(),
                "train_log": self.log,
                "evals": self.evals,
                "best": self.best,
                "elapsed": self.elapsed_before + time.perf_counter() - self.started,
            },
        )
        self._write_logs()

    def _evaluated(self, iteration: int, split: str) -> dict[str, float]:
        """The metrics of ``split`` the selection already measured at ``iteration`` (the same weights and
        the same evaluation, so the same values), or ``{}``."""
        return {
            row["metric"]: row["value"]
            for row in self.evals
            if (row["iteration"], row["split"]) == (iteration, split)
        }

    def final_evaluation(self) -> Metrics:
        """Test (and validation) metrics of the final and the selected weights; saves the pair weights (and
        weights)."""
        net, final_state = _unwrap(self.model), _state(self.model)
        names = (["test"] if self.evaluate_test else []) + (["val"] if self.splits.val is not None else [])

        def evaluate_all(iteration: int) -> dict[str, dict[str, float]]:
            return {
                s: self._evaluated(iteration, s)
                or evaluate_split(self.model, self.splits, s, self.cfg, self.device, self.amp, self.ctx)
                for s in names
            }

        metrics = {"final": evaluate_all(self.cfg.train.iterations)}
        if self.best["state"] is not None and self.best["iteration"] != self.cfg.train.iterations:
            net.load_state_dict(self.best["state"])
            metrics["selected"] = evaluate_all(self.best["iteration"])
            net.load_state_dict(final_state)
        else:
            metrics["selected"] = metrics["final"]
        pair_weights = _collect_pair_weights(
            self.model, self.loss_fn, self.splits, self.cfg, self.device, self.ctx
        )
        if self.main:
            atomic_save_npz(self.paths.pair_weights, pair_weights)
            if self.cfg.train.keep_weights:
                atomic_torch_save(self.paths.weights("final"), final_state)
                atomic_torch_save(self.paths.weights("selected"), self.best["state"] or final_state)
        return metrics

    def finish(self, status: CellStatus, reason: str | None) -> CellOutcome:
        """Final evaluation (when the cell finished), then final.json, the logs and the status; no
        checkpoint."""
        train_seconds = self.elapsed_before + time.perf_counter() - self.started
        eval_started = time.perf_counter()
        metrics = self.final_evaluation() if status == CellStatus.FINISHED else {}
        eval_seconds = time.perf_counter() - eval_started
        if self.main:
            self._write_logs()
            rates, best = [row["images_per_s"] for row in self.log], self.best
            no_selection = self.cfg.train.select_on == "final"  # the selected weights are the final ones
            write_record(
                self.paths.final,
                FinalRecord(
                    cell_id=self.cfg.cell_id,
                    status=status,
                    reason=reason,
                    resolved_loss=self.cfg.resolved_loss(),
                    select_on=self.cfg.train.select_on,
                    select_metric=None if no_selection else self.cfg.train.select_metric,
                    selected_iteration=(self.cfg.train.iterations if metrics else None)
                    if no_selection
                    else best["iteration"],
                    selected_value=best["value"] if best["iteration"] is not None else None,
                    iterations=self.cfg.train.iterations,
                    metrics=metrics,
                    timings=Timings(
                        train_seconds=train_seconds,
                        final_eval_seconds=eval_seconds,
                        cpu_seconds=time.process_time() - self.cpu_started,
                        median_images_per_s=float(np.median(rates)) if rates else None,
                    ),
                    device=str(self.device),
                    world_size=self.world_size,
                    finished=now(),
                ),
            )
            write_record(self.paths.status, StatusRecord(status=status, reason=reason, finished=now()))
            self.paths.checkpoint.unlink(missing_ok=True)
            self.tracker.log_metrics(self.cfg.train.iterations, metrics)
            self.tracker.close(status)
        return CellOutcome(self.cfg.cell_id, status, reason, metrics, train_seconds)

    def _write_logs(self) -> None:
        atomic_write_csv(self.paths.train_log, self.log, TRAIN_LOG_COLUMNS)
        atomic_write_csv(self.paths.evals, self.evals, EVAL_COLUMNS)


def train_cell(
    cfg: CellConfig,
    paths: CellPaths,
    *,
    splits: DatasetSplits | None = None,
    on_eval: EvalCallback | None = None,
    progress: bool = True,
    ctx: DistContext | None = None,
    evaluate_test: bool = True,
) -> CellOutcome:
    """Train and evaluate one cell, resuming from ``paths.checkpoint`` when it exists.

    ``splits`` defaults to :func:`harness.builders.load_splits` of ``cfg``. ``on_eval(iteration, metrics)``
    is called after each evaluation on the selection split (it may raise, e.g. ``optuna.TrialPruned``,
    which propagates). ``evaluate_test=False`` never touches the test set (hyperparameter search): the
    final report then holds validation metrics only.
    """
    run = _CellRun(cfg, paths, ctx, splits, evaluate_test)
    run.restore()
    run.record_start()
    run.start_tracking()
    run.distribute()
    bar = Progress(cfg.train.iterations, run.start, cfg.cell_id, enabled=progress and run.main)
    bar.message(run.describe())
    gpu = run.device if run.device.type == "cuda" else None
    batches = training_batches(run.splits, cfg, run.start, ctx, normalise_on=gpu)
    run.window_start = time.perf_counter()
    status, reason = CellStatus.FINISHED, None
    try:
        for iteration in range(run.start + 1, cfg.train.iterations + 1):
            loss = run.step(iteration, *next(batches))
            run.log_step(iteration, loss, bar)
            run.evaluate_and_select(iteration, on_eval, bar)
            stop = CHECKPOINT_AND_STOP.is_set() and iteration < cfg.train.iterations
            run.checkpoint(iteration, now=stop)
            if stop:
                raise CheckpointedStop(f"{cfg.cell_id}: checkpointed at iteration {iteration} on request")
    except NonFiniteError as err:
        status, reason = CellStatus.FAILED, str(err)
    except BaseException:  # interrupted, pruned or crashed: the loggers keep what they have, the run resumes
        run.tracker.close(None)
        raise
    finally:
        bar.close()
    failed = status == CellStatus.FAILED
    if broadcast_flag(failed, ctx) and not failed:
        status, reason = CellStatus.FAILED, "another rank stopped on a non-finite value"
    try:
        return run.finish(status, reason)  # closes the loggers with the cell's status
    finally:
        run.tracker.close(None)  # unless the final evaluation raised
