"""Data-pipeline speed: JPEG decode + the training transform, images/s per DataLoader worker process.

Writes a temporary CUB-format tree of real JPEG files (500 x 375 by default, photo-like: smooth colour
fields with fine noise, quality 90) and reads it three ways, each through a ``DataLoader`` with one
worker process (so the figure is what one worker delivers, inter-process transfer included):

- ``harness paper``: ``harness.data.build_splits("cub", ...)`` train split, the paper's transform
  (RandomResizedCrop(224, scale 0.08-1) + flip, BN-Inception input), batches from the harness sampler;
- ``harness official``: the official code's transform (Resize(256) -> RandomResizedCrop(227, scale 0.16-1)
  + flip), batches from the official sampler;
- ``cache paper`` / ``cache official``: the same two, read from the pre-decoded image cache
  (``data.decoded_cache: true``; built once before the timing, its build time and size printed);
- ``cache uint8 paper`` / ``cache uint8 official``: the cache with the workers stopping at uint8 batches
  (float conversion and normalisation left to the consumer: the trainer does so with fast crops only);
- ``fast ...``: the same four with ``data.decoded_cache: fast`` (crops resampled by torch's uint8 kernel);
- ``torchvision``: the baseline, a plain ``ImageFolder`` over the same files with
  ``RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize``, shuffled batches.

Runs alternate over ``--repeats`` rounds and the fastest round of each counts (the first batch, which
includes the worker start, is left out). Prints images/s per worker, the ratio against torchvision, and
how many workers a GPU consuming ``--gpu-rate`` images/s needs, with and without the cache. Timings on a
loaded machine are not
meaningful: give the load average (printed) with any figure you record.

    python benchmarks/data_speed.py --quick           # a few seconds, while developing
    python benchmarks/data_speed.py                   # about a minute on 2 cores
    python benchmarks/data_speed.py --gpu-rate 2500   # workers needed for a faster GPU
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from harness.data import build_batch_sampler, build_splits
from harness.errors import ArgumentParser

CLASSES_PER_BATCH, SAMPLES_PER_CLASS = 16, 5  # batch 80, as the official code trains


def photo_like(rng: np.random.Generator, noise: np.ndarray) -> Image.Image:
    """A JPEG-realistic image: a bicubic upsampling of a coarse random colour field plus fine noise.

    ``noise`` (height x width x 3, int16) is shared by all images, each taking it at a random shift.
    """
    height, width = noise.shape[:2]
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC
    )
    shifted = np.roll(noise, tuple(rng.integers(0, (height, width))), axis=(0, 1))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + shifted, 0, 255).astype(np.uint8))


def write_cub_tree(root: Path, classes: int, per_class: int, size: tuple[int, int]) -> Path:
    """A CUB_200_2011 tree of real JPEG files (train classes 1..``classes``); returns its images/ folder."""
    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 6.0, (size[1], size[0], 3)).round().astype(np.int16)
    rows = []
    counts = {class_id: per_class for class_id in range(1, classes + 1)}
    counts[101] = 2  # CUB needs a test split (classes 101-200): one small class (ImageFolder reads it too)
    for class_id, count in counts.items():
        for k in range(count):
            relative = f"{class_id:03d}.Class_{class_id}/Class_{class_id}_{k:04d}.jpg"
            path = folder / "images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            photo_like(rng, noise).save(path, "JPEG", quality=90)
            rows.append((relative, class_id))
    numbered = list(enumerate(rows, start=1))
    (folder / "images.txt").write_text("".join(f"{i} {path}\n" for i, (path, _) in numbered))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, (_, c) in numbered))
    return folder / "images"


@dataclass(frozen=True)
class Pipeline:
    """A named way to get batches of ``image_size`` tensors: ``make()`` returns a fresh DataLoader."""

    name: str
    image_size: int
    make: Callable[[], Iterable[object]]


def harness_pipeline(
    root: Path,
    protocol: str,
    batches: int,
    cache_dir: Path | None = None,
    uint8: bool = False,
    fast: bool = False,
) -> Pipeline:
    """The harness's CUB reader with the paper's or the official code's training transform and sampler;
    ``cache_dir``: read from the decoded image cache there (``fast``: ``decoded_cache: fast``); ``uint8``:
    its workers stop before the float conversion and normalisation (left to the consumer, e.g. the GPU)."""
    if protocol == "official":
        options = {"image_size": 227, "crop_scale": (0.16, 1.0), "resize_size": 256, "train_resize": True}
    else:
        options = {"image_size": 224, "crop_scale": (0.08, 1.0)}
    setting = "fast" if fast else True
    cached = {"decoded_cache": setting, "cache_dir": cache_dir} if cache_dir is not None else {}
    splits = build_splits("cub", root, convention="bninception", strict_counts=False, **cached, **options)
    sampler_name = "official" if protocol == "official" else "proportional"
    if uint8:
        splits.train.uint8_batches = True  # type: ignore[attr-defined]  # a CachedImageDataset

    def make() -> Iterable[object]:
        sampler = build_batch_sampler(
            sampler_name, splits.train.labels, CLASSES_PER_BATCH, SAMPLES_PER_CLASS, seed=0
        )
        return torch.utils.data.DataLoader(
            splits.train, batch_sampler=list(islice(iter(sampler), batches)), num_workers=1
        )

    kind = ("fast" if fast else "cache") + (" uint8" if uint8 else "") if cache_dir else "harness"
    return Pipeline(f"{kind} {protocol}", int(options["image_size"]), make)


def torchvision_pipeline(images: Path) -> Pipeline:
    """The baseline: torchvision ImageFolder + DataLoader with the usual ImageNet training transform."""
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(224, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    folder = datasets.ImageFolder(str(images), transform=transform)

    def make() -> Iterable[object]:
        generator = torch.Generator().manual_seed(0)
        batch = CLASSES_PER_BATCH * SAMPLES_PER_CLASS
        return torch.utils.data.DataLoader(
            folder, batch_size=batch, shuffle=True, drop_last=True, num_workers=1, generator=generator
        )

    return Pipeline("torchvision", 224, make)


def images_per_second(pipeline: Pipeline) -> float:
    """Images/s after the first batch (which pays for the worker start)."""
    loader = iter(pipeline.make())
    first, _ = next(loader)
    assert tuple(first.shape[1:]) == (3, pipeline.image_size, pipeline.image_size), first.shape
    count, start = 0, time.perf_counter()
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images and one round (checks that it runs)")
    parser.add_argument("--classes", type=int, default=None, help="training classes (default 20; quick 16)")
    parser.add_argument("--per-class", type=int, default=None, help="images per class (default 25; quick 10)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds (default 2; quick 1)")
    parser.add_argument(
        "--gpu-rate", type=float, default=1500.0, help="images/s the GPU consumes (default 1500)"
    )
    args = parser.parse_args(argv)
    classes = args.classes or (16 if args.quick else 20)
    per_class = args.per_class or (10 if args.quick else 25)
    repeats = args.repeats or (1 if args.quick else 2)
    batch = CLASSES_PER_BATCH * SAMPLES_PER_CLASS
    batches = classes * per_class // batch
    if not CLASSES_PER_BATCH <= classes <= 100 or batches < 2:
        parser.error(f"need {CLASSES_PER_BATCH} to 100 classes (CUB's training range) and {2 * batch} images")

    with tempfile.TemporaryDirectory(prefix="data-speed-") as tmp:
        started = time.perf_counter()
        images = write_cub_tree(Path(tmp), classes, per_class, tuple(args.size))
        print(
            f"wrote {classes * per_class} JPEGs of {args.size[0]}x{args.size[1]} px in "
            f"{time.perf_counter() - started:.1f} s; {batches} batches of {batch}; {repeats} round(s); "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        cache_dir = Path(tmp) / "cache"
        started = time.perf_counter()
        pipelines = [
            harness_pipeline(Path(tmp), "paper", batches, cache_dir),
            harness_pipeline(Path(tmp), "official", batches, cache_dir),
        ]
        size = sum(path.stat().st_size for path in cache_dir.iterdir())
        print(
            f"decoded cache (shorter side 256; the paper's and the official transform share it): built in "
            f"{time.perf_counter() - started:.1f} s, {size / 2**20:.1f} MiB for {classes * per_class + 2} "
            "images"
        )
        pipelines = [
            harness_pipeline(Path(tmp), "paper", batches),
            harness_pipeline(Path(tmp), "official", batches),
            *pipelines,
            harness_pipeline(Path(tmp), "paper", batches, cache_dir, uint8=True),
            harness_pipeline(Path(tmp), "official", batches, cache_dir, uint8=True),
            *(
                harness_pipeline(Path(tmp), protocol, batches, cache_dir, uint8=uint8, fast=True)
                for uint8 in (False, True)
                for protocol in ("paper", "official")
            ),
            torchvision_pipeline(images),
        ]
        best = {p.name: 0.0 for p in pipelines}
        for _ in range(repeats):
            for pipeline in pipelines:
                best[pipeline.name] = max(best[pipeline.name], images_per_second(pipeline))

    baseline = best["torchvision"]
    print(f"{'pipeline':<20} {'px':>4} {'images/s per worker':>20} {'vs torchvision':>15} {'workers':>8}")
    for pipeline in pipelines:
        rate = best[pipeline.name]
        workers = math.ceil(args.gpu_rate / rate)
        print(
            f"{pipeline.name:<20} {pipeline.image_size:>4} {rate:>20.1f} {rate / baseline:>14.2f}x "
            f"{workers:>8}"
        )
    print(
        f"workers: DataLoader worker processes a GPU consuming {args.gpu_rate:.0f} images/s needs "
        "(one core each)"
    )
    without = max(best["harness paper"], best["harness official"])
    with_cache = max(best["cache paper"], best["cache official"])
    print(
        f"at {args.gpu_rate:.0f} images/s: {math.ceil(args.gpu_rate / without)} workers without the cache, "
        f"{math.ceil(args.gpu_rate / with_cache)} with it (the faster protocol of each); torchvision "
        f"{math.ceil(args.gpu_rate / baseline)}; cache vs torchvision per worker: "
        f"{best['cache paper'] / baseline:.2f}x (paper), {best['cache official'] / baseline:.2f}x (official)"
    )
    raw = max(best["cache uint8 paper"], best["cache uint8 official"])
    print(
        "uint8 batches from the cache (normalised by the consumer; the trainer does so with fast crops "
        f"only): "
        f"{math.ceil(args.gpu_rate / raw)} workers, {best['cache uint8 paper'] / baseline:.2f}x (paper), "
        f"{best['cache uint8 official'] / baseline:.2f}x (official) vs torchvision per worker"
    )

    for kind, how in (("fast", ""), ("fast uint8", "; uint8 batches, as the trainer on a GPU")):
        paper, official = best[f"{kind} paper"] / baseline, best[f"{kind} official"] / baseline
        fastest = max(best[f"{kind} paper"], best[f"{kind} official"])
        print(
            f"{kind} (data.decoded_cache: fast{how}): "
            f"{math.ceil(args.gpu_rate / fastest)} workers, {paper:.2f}x (paper), {official:.2f}x (official) "
            "vs torchvision per worker"
        )


if __name__ == "__main__":
    main()
