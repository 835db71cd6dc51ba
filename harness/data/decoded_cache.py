"""An optional pre-decoded image cache: each image decoded once, resized, stored as uint8 and memory-mapped.

:func:`open_cache` decodes every image of a dataset once with PIL (the same reader as
:class:`~harness.data.images.ImageDataset`), resizes its shorter side to the transform's ``resize_size``
with the transform's own ``v2.Resize`` (same interpolation, antialiased), and stores the pixels in one flat
uint8 ``.npy`` file (HxWx3 rows back to back) plus an index ``.npy`` of (offset, height, width, source
height, source width) per image.
Both are read with ``numpy.load(mmap_mode="r")``, so worker processes share the pages and nothing is
decoded again.

The file names carry a key, a hash of the format version, the resize rule and every image's relative
path, size and modification time: a changed, added or removed image, or another resize size, gives
another key, so a stale cache is never read (it is built anew next to the old one). Building writes to
temporary files in the same folder and renames them into place, the index last; a reader only trusts a
cache whose index exists, so a build that stops halfway leaves no cache. A cache file that does not
match its index (damaged, truncated, not written by this module) is one DataError line naming the file
and saying to delete it.

:class:`CachedImageDataset` replaces an ``ImageDataset`` on the cached pixels. It runs the dataset's own
transform objects, minus its leading ``Resize`` to the cache's size (already applied): the same
RandomResizedCrop and flip draw the same random numbers from the same seeds as on the decoded JPEG.
Batches (``__getitems__``, which the DataLoader calls with a batch sampler) run the per-image PIL steps
(crop, flip, greyscale) one image at a time and the tensor steps (to float, scale, normalise) once on the
whole uint8 batch: elementwise, so bit-identical to the per-image path.

A transform whose first step is a RandomResizedCrop of the full-size image (the paper's training
transform, no ``train_resize``) draws its crop on the source image's size (same random numbers, same box
in source pixels) and cuts that box, scaled, out of the cached image (PIL resize with a fractional box):
the same region and flip, resampled from the smaller image; docs/data.md states the pixel difference.

``crops="torch"`` (config ``data.decoded_cache: fast``) cuts and resamples a RandomResizedCrop + flip with
torch's uint8 antialiased kernel (the same filter, SIMD; about 2.5x faster than PIL) straight from the
memory map into the batch: the box's size is kept exactly, its corner is rounded to the cached pixel grid
(at most half a cached pixel; exact for the official protocol, whose box is whole cached pixels), and a
pixel may differ from PIL's by one level (PIL rounds between its two passes). The random draws are the
same. Other transforms, and ``crops="pil"`` (``decoded_cache: true``), take the PIL path above.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.data.images import ImageDataset
from harness.data.transforms import RescaleAndReorder, Transform
from harness.errors import DataError, UserError

VERSION = 2
"""Format version of the cache files; part of the key, so a new format never reads an old file."""

CACHE_ENV = "HARNESS_CACHE"
INDEX_COLUMNS = 5  # offset, height, width, source height, source width
HEADER_BYTES = 128  # the .npy header of the pixel file, padded to this length (numpy format 1.0)


def default_cache_dir() -> Path:
    """``$HARNESS_CACHE/decoded`` if set, else ``~/.cache/gpw-harness/decoded``."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "gpw-harness") / "decoded"


def cache_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The folder holding the decoded caches: ``cache_dir`` (config ``data.cache_dir``) or the default."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


@dataclass(frozen=True)
class ResizeRule:
    """How the cached images are resized: shorter side to ``size`` pixels with ``interpolation``;
    ``crops`` (not part of the cache's key) resamples training crops with ``"pil"`` (as the JPEG path) or
    ``"torch"`` (:class:`TorchCrop`)."""

    size: int
    interpolation: str = "bilinear"
    crops: str = "pil"

    def resize(self) -> v2.Resize:
        """The torchvision step that applies the rule (as the evaluation and official transforms do)."""
        return v2.Resize(self.size, interpolation=v2.InterpolationMode(self.interpolation), antialias=True)


def cache_key(root: Path, files: Sequence[str], rule: ResizeRule) -> str:
    """A hash of the format version, ``rule`` and each file's name, size and modification time."""
    digest = hashlib.sha256(f"v{VERSION} {rule.size} {rule.interpolation}\n".encode())
    for name in files:
        info = os.stat(root / name)
        digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CachePaths:
    """The two files of one cache: the flat pixels and the index (see :data:`INDEX_COLUMNS`)."""

    pixels: Path
    index: Path

    @classmethod
    def of(cls, folder: Path, name: str, key: str) -> CachePaths:
        stem = folder / f"decoded-{name}-{key}"
        return cls(Path(f"{stem}.pixels.npy"), Path(f"{stem}.index.npy"))

    def size_bytes(self) -> int:
        return self.pixels.stat().st_size + self.index.stat().st_size


class DecodedCache:
    """The cached images of one list of files: ``cache.image(i)`` is image ``i`` as HxWx3 uint8 (a view).

    Opens the memory maps on first use in each process (a pickled cache carries only its paths, so a
    DataLoader worker maps the files itself).
    """

    def __init__(self, paths: CachePaths, files: Sequence[str]) -> None:
        self.paths = paths
        self.files = list(files)
        self.position = {name: i for i, name in enumerate(self.files)}
        self._pixels: np.ndarray | None = None
        self._index: np.ndarray | None = None
        self._check()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None, "_index": None}

    def _corrupt(self, path: Path, what: str) -> DataError:
        return DataError(
            f"decoded image cache {path} is damaged or not a harness cache ({what}); delete it "
            "(and its .pixels.npy / .index.npy partner) and it is built again"
        )

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pixels is None or self._index is None:
            try:
                index = np.load(self.paths.index, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise self._corrupt(self.paths.index, " ".join(str(err).split())[:120]) from None
            try:
                pixels = np.load(self.paths.pixels, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise self._corrupt(self.paths.pixels, "missing") from None
            except (OSError, ValueError, EOFError) as err:
                raise self._corrupt(self.paths.pixels, " ".join(str(err).split())[:120]) from None
            self._index, self._pixels = index, pixels
        return self._pixels, self._index

    def _check(self) -> None:
        """DataError unless the index has one row per file and the pixel file holds exactly its pixels."""
        pixels, index = self._open()
        if index.dtype != np.int64 or index.ndim != 2 or index.shape != (len(self.files), INDEX_COLUMNS):
            raise self._corrupt(
                self.paths.index,
                f"index {index.dtype} {index.shape}, expected int64 ({len(self.files)}, {INDEX_COLUMNS})",
            )
        if pixels.dtype != np.uint8 or pixels.ndim != 1:
            raise self._corrupt(self.paths.pixels, f"{pixels.dtype} {pixels.shape}, expected flat uint8")
        offsets, heights, widths = (np.asarray(index[:, k]) for k in range(3))
        if (np.asarray(index[:, 3:]) < 1).any():
            raise self._corrupt(self.paths.index, "a source size below 1 pixel")
        ends = offsets + heights * widths * 3
        expected = int(ends[-1]) if len(ends) else 0
        starts_ok = bool(len(offsets) == 0 or (offsets[0] == 0 and np.array_equal(offsets[1:], ends[:-1])))
        if not starts_ok or (heights < 1).any() or (widths < 1).any() or pixels.shape[0] != expected:
            raise self._corrupt(
                self.paths.pixels, f"{pixels.shape[0]:,} bytes of pixels, the index describes {expected:,}"
            )

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as a read-only HxWx3 uint8 array (a view of the memory map)."""
        pixels, index = self._open()
        offset, height, width = (int(x) for x in index[i, :3])
        return pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def source_size(self, i: int) -> tuple[int, int]:
        """(height, width) of image ``i`` as decoded, before the cache's resize."""
        _, index = self._open()
        return int(index[i, 3]), int(index[i, 4])


def _write_header(handle: Any, total: int) -> None:
    """The .npy (format 1.0) header of a flat uint8 array of ``total`` bytes, padded to HEADER_BYTES."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (total,)}
    text = repr(header).encode("latin1")
    pad = HEADER_BYTES - 10 - len(text) - 1
    handle.write(
        b"\x93NUMPY\x01\x00" + (len(text) + pad + 1).to_bytes(2, "little") + text + b" " * pad + b"\n"
    )


def build_cache(
    dataset: ImageDataset,
    files: Sequence[str],
    paths: CachePaths,
    rule: ResizeRule,
    *,
    progress: bool = False,
) -> None:
    """Decode, resize and write ``files`` (read as ``dataset`` reads them) to ``paths``, atomically."""
    from tqdm import tqdm

    paths.index.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp_pixels, tmp_index = Path(f"{paths.pixels}{tag}"), Path(f"{paths.index}{tag}")
    resize = rule.resize()
    reader = ImageDataset(
        dataset.root,
        files,
        np.zeros(len(files), dtype=np.int64),
        np.zeros(len(files), dtype=np.int64),
        dataset.transform,
        title=dataset.title,
        source=dataset.source,
    )
    rows = np.zeros((len(files), INDEX_COLUMNS), dtype=np.int64)
    try:
        with open(tmp_pixels, "wb") as handle:
            handle.write(b"\0" * HEADER_BYTES)
            offset = 0
            bar = tqdm(range(len(files)), desc=f"caching {dataset.title}", disable=None if progress else True)
            for i in bar:
                source = reader.load(i)
                pixels = np.ascontiguousarray(np.asarray(resize(source), dtype=np.uint8))
                height, width = pixels.shape[:2]
                rows[i] = (offset, height, width, source.height, source.width)
                handle.write(pixels.tobytes())
                offset += pixels.size
            handle.seek(0)
            _write_header(handle, offset)
            handle.flush()
            os.fsync(handle.fileno())
        with open(tmp_index, "wb") as handle:
            np.save(handle, rows, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_pixels, paths.pixels)
        os.replace(tmp_index, paths.index)  # last: a cache without its index is never read
    except OSError as err:
        raise UserError(
            f"cannot write the decoded image cache {paths.pixels} ({err.strerror or err}); free some space "
            "or set data.cache_dir (or $HARNESS_CACHE) to a writable folder with room"
        ) from None
    finally:
        for tmp in (tmp_pixels, tmp_index):
            tmp.unlink(missing_ok=True)


def open_cache(
    dataset: ImageDataset,
    files: Sequence[str],
    rule: ResizeRule,
    *,
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    build: bool = True,
    progress: bool = False,
) -> tuple[DecodedCache, bool]:
    """The cache of ``files`` (relative to ``dataset.root``) under ``rule``, built first when missing
    (``build``); returns it and whether it was built now. ``name`` (the dataset's) starts the file name."""
    paths = CachePaths.of(cache_folder(cache_dir), name, cache_key(dataset.root, files, rule))
    built = False
    if not paths.index.exists():
        if not build:
            raise UserError(
                f"no decoded image cache {paths.index}; build it with python -m harness.data cache"
            )
        build_cache(dataset, files, paths, rule, progress=progress)
        built = True
    return DecodedCache(paths, files), built


def split_transform(transform: Transform, rule: ResizeRule) -> tuple[list[Transform], list[Transform]]:
    """``transform``'s steps on the cached image: (PIL steps, tensor steps), without a leading Resize to
    ``rule.size`` (the cache has applied it). A transform that is not a ``v2.Compose`` with a ``ToImage``
    step is kept whole as the PIL part (batches then run it image by image)."""
    steps = list(getattr(transform, "transforms", []))
    if not isinstance(transform, v2.Compose) or not any(isinstance(s, v2.ToImage) for s in steps):
        return [transform], []
    first = steps[0]
    if isinstance(first, v2.Resize) and list(first.size or []) == [rule.size]:
        steps = steps[1:]
    cut = next(i for i, s in enumerate(steps) if isinstance(s, v2.ToImage))
    return steps[:cut], steps[cut:]


def draw_box(
    crop: v2.RandomResizedCrop, drawn: tuple[int, int], cached: tuple[int, int]
) -> tuple[float, float, float, float]:
    """``crop``'s random box drawn on a ``drawn`` (height, width) image (``crop.make_params``: the same
    numbers as on that image), as (top, left, height, width) in the pixels of its ``cached`` copy."""
    params = crop.make_params([torch.empty((1, *drawn), device="meta")])
    sy, sx = cached[0] / drawn[0], cached[1] / drawn[1]
    return params["top"] * sy, params["left"] * sx, params["height"] * sy, params["width"] * sx


def crop_at_source_scale(
    crop: v2.RandomResizedCrop, image: Image.Image, source: tuple[int, int]
) -> Image.Image:
    """``crop`` as it acts on the ``source`` (height, width) image, cut from its smaller copy ``image``.

    The crop's random draws are made on the source size (``crop.make_params``: the same numbers and the
    same box as on the full-size image); the box, scaled to ``image``, is resampled to the crop's output
    size in one PIL resize with a fractional box, with the crop's interpolation.
    """
    if image.size == source[::-1]:
        return crop(image)
    top, left, height, width = draw_box(crop, source, (image.height, image.width))
    box = (left, top, left + width, top + height)
    resample = PIL_FILTERS[crop.interpolation]
    out_height, out_width = crop.size
    return image.resize((out_width, out_height), resample, box=box)


PIL_FILTERS = {
    v2.InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    v2.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    v2.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    v2.InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
    v2.InterpolationMode.BOX: Image.Resampling.BOX,
    v2.InterpolationMode.HAMMING: Image.Resampling.HAMMING,
}
"""torchvision's interpolation modes as PIL filters (what torchvision itself uses on PIL images)."""

TORCH_AA_RESIZES = {
    v2.InterpolationMode.BILINEAR: torch.ops.aten._upsample_bilinear2d_aa,
    v2.InterpolationMode.BICUBIC: torch.ops.aten._upsample_bicubic2d_aa,
}
"""The antialiased resizes torch has for uint8 (PIL's filters; output size and scale given separately)."""


@dataclass(frozen=True)
class TorchCrop:
    """A RandomResizedCrop (drawn on the source size or on the cached image) + optional flip in torch."""

    crop: v2.RandomResizedCrop
    flip: v2.RandomHorizontalFlip | None
    at_source_scale: bool
    resize: Any  # the crop's entry of TORCH_AA_RESIZES

    @classmethod
    def of(cls, steps: Sequence[Transform], at_source_scale: bool) -> TorchCrop | None:
        """The crop and flip of ``steps`` when that is all they are and torch has their filter."""
        crop = steps[0] if steps else None
        rest = list(steps[1:])
        flip = rest.pop(0) if rest and type(rest[0]) is v2.RandomHorizontalFlip else None
        if not isinstance(crop, v2.RandomResizedCrop) or type(crop) is not v2.RandomResizedCrop or rest:
            return None
        resize = TORCH_AA_RESIZES.get(v2.InterpolationMode(crop.interpolation))
        return None if resize is None else cls(crop, flip, at_source_scale, resize)

    def __call__(self, pixels: np.ndarray, source: tuple[int, int]) -> torch.Tensor:
        """The crop of cached ``pixels`` (HxWx3 uint8) as a 1x3xhxw uint8 tensor, drawing what
        ``crop`` then ``flip`` draw (the crop on ``source``, the image's size before the cache)."""
        height, width = pixels.shape[:2]
        box = draw_box(self.crop, source if self.at_source_scale else (height, width), (height, width))
        box_top, box_left, box_h, box_w = box
        top, left = min(round(box_top), height - 1), min(round(box_left), width - 1)
        bottom = max(min(math.ceil(top + box_h), height), top + 1)
        right = max(min(math.ceil(left + box_w), width), left + 1)
        region = torch.from_numpy(np.array(pixels[top:bottom, left:right]))  # a copy: the map is read-only
        out_h, out_w = self.crop.size
        # Scales given (output / box size), so the box keeps its fractional size whatever the slice's.
        image = self.resize(
            region.permute(2, 0, 1).unsqueeze(0), [out_h, out_w], False, out_h / box_h, out_w / box_w
        )
        if self.flip is not None and torch.rand(1) < self.flip.p:  # what the flip's forward draws
            image = image.flip(-1)
        return image


class CachedImageDataset(torch.utils.data.Dataset):
    """An :class:`ImageDataset` read from a :class:`DecodedCache`: same files, labels and transform steps."""

    def __init__(self, dataset: ImageDataset, cache: DecodedCache, rule: ResizeRule) -> None:
        self.dataset = dataset
        self.cache = cache
        self.rows = np.array([cache.position[name] for name in dataset.files], dtype=np.int64)
        self.labels = dataset.labels
        self.class_ids = dataset.class_ids
        self.files = dataset.files
        self.root = dataset.root
        self.title = dataset.title
        self.source = dataset.source
        self.pil_steps, self.tensor_steps = split_transform(dataset.transform, rule)
        first = self.pil_steps[0] if self.pil_steps else None
        # A crop after the transform's own Resize (the official protocol) is drawn on the cached image,
        # which is that resize; one of the full-size image (the paper's) on the source size.
        leading = next(iter(getattr(dataset.transform, "transforms", [])), None)
        of_full_size = isinstance(first, v2.RandomResizedCrop) and not isinstance(leading, v2.Resize)
        self.source_crop = first if of_full_size else None
        fast = rule.crops == "torch" and bool(self.tensor_steps)
        self.torch_crop = TorchCrop.of(self.pil_steps, self.source_crop is not None) if fast else None
        # True: batches stop before the tensor steps (uint8 NxCxHxW out, for the consumer to normalise
        # with :meth:`finish`); the trainer sets it on a copy when it trains on a GPU with fast crops.
        self.uint8_batches = False

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> Image.Image:
        """Cached image ``index`` as a PIL RGB image (a copy of the mapped pixels)."""
        return Image.fromarray(np.array(self.cache.image(int(self.rows[index]))))

    def _pil(self, index: int) -> Any:
        image: Any = self.load(index)
        steps = self.pil_steps
        if self.source_crop is not None:
            image = crop_at_source_scale(
                self.source_crop, image, self.cache.source_size(int(self.rows[index]))
            )
            steps = steps[1:]
        for step in steps:
            image = step(image)
        return image

    def _tensor(self, image: Any) -> torch.Tensor:
        for step in self.tensor_steps:
            image = step(image)
        return torch.as_tensor(image)

    def _torch_crop(self, index: int) -> torch.Tensor:
        row = int(self.rows[index])
        assert self.torch_crop is not None
        return self.torch_crop(self.cache.image(row), self.cache.source_size(row))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.torch_crop is not None:
            return self.finish(self._torch_crop(index))[0], int(self.labels[index])
        return self._tensor(self._pil(index)), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch: the PIL steps image by image, the tensor steps once on the stacked uint8 batch."""
        if not self.tensor_steps:
            return [self[i] for i in indices]
        if self.torch_crop is not None:
            batch = torch.cat([self._torch_crop(i) for i in indices])
            tensors = batch if self.uint8_batches else self.finish(batch)
            return [(tensors[k], int(self.labels[i])) for k, i in enumerate(indices)]
        images = [np.asarray(self._pil(i)) for i in indices]
        if len({a.shape for a in images}) != 1:  # crops of different sizes (a custom transform)
            return [
                (self._tensor(Image.fromarray(a)), int(self.labels[i]))
                for a, i in zip(images, indices, strict=True)
            ]
        stacked = np.stack(images)
        batch = torch.from_numpy(stacked.reshape(*stacked.shape[:3], -1)).permute(0, 3, 1, 2).contiguous()
        tensors = batch if self.uint8_batches else self.finish(batch)
        return [(tensors[k], int(self.labels[i])) for k, i in enumerate(indices)]

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """The tensor steps (to float, scale, normalise) on a uint8 NxCxHxW batch, as per image."""
        steps = [s for s in self.tensor_steps if not isinstance(s, v2.ToImage)]
        for k, step in enumerate(steps):
            if not isinstance(step, v2.ToDtype | v2.ToPureTensor):
                if isinstance(step, RescaleAndReorder) and step.bgr:
                    # The channel reversal, a permutation after channel-uniform steps only, moved to the
                    # uint8 batch: the same values, a quarter of the bytes to copy.
                    batch = batch.flip(-3)
                    steps[k] = RescaleAndReorder(step.value_range, False)
                break
        out: Any = tv_tensors.Image(batch)  # what ToImage makes of each image, stacked
        for step in steps:
            out = step(out)
        return torch.as_tensor(out)

    def verify(self, *, decode: bool = False, progress: bool = False) -> None:
        """The underlying files' check (:meth:`ImageDataset.verify`)."""
        self.dataset.verify(decode=decode, progress=progress)


def cache_splits(
    datasets: dict[str, ImageDataset],
    rule: ResizeRule,
    *,
    name: str,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool = True,
) -> tuple[dict[str, CachedImageDataset], DecodedCache, bool]:
    """One cache over every image of ``datasets`` (the splits of one benchmark), and each split on it."""
    # Sorted: the same images give the same cache whichever way the validation split cuts them.
    files = sorted({file for dataset in datasets.values() for file in dataset.files})
    first = next(iter(datasets.values()))
    cache, built = open_cache(first, files, rule, name=name, cache_dir=cache_dir, progress=progress)
    return {split: CachedImageDataset(d, cache, rule) for split, d in datasets.items()}, cache, built
