"""Shared machinery for the four official image benchmarks (CUB, Cars, SOP, In-Shop).

A dataset module describes itself with an :class:`OfficialDataset` (folder name, list files, official
counts, where to get it) and a ``read`` function that turns its list files into :class:`ImageList` per
split. This module finds the folder under the data root, parses list files, checks the official counts
and that every image file exists, carves the validation split and assembles :class:`DatasetSplits`.
This module downloads nothing (:mod:`harness.data.fetch` installs the data): every problem is a
one-line :class:`DataError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.decoded_cache import ResizeRule, cache_splits
from harness.data.images import ImageDataset
from harness.data.registry import DATASETS, DatasetEntry, DatasetRequest
from harness.data.splits import DatasetSplits, relabel, split_classes
from harness.data.transforms import Transform, build_transform, eval_resize_size, get_convention
from harness.errors import DataError

DATA_ROOT_ENV = "HARNESS_DATA"
NON_STRICT_HINT = "or pass strict_counts=False (config field data.strict_counts) to accept a subset"


@dataclass(frozen=True)
class ImageList:
    """Image files (relative to the dataset folder) and their original class ids."""

    files: list[str]
    class_ids: np.ndarray

    def select(self, index: np.ndarray) -> ImageList:
        """The images at positions ``index`` (an int index array or a boolean mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return ImageList([self.files[i] for i in index], self.class_ids[index])


@dataclass(frozen=True)
class OfficialDataset:
    """What the shared machinery needs to know about one official benchmark."""

    name: str  # registry name, e.g. "cub"
    title: str  # the dataset's own name, e.g. "CUB-200-2011"
    folder: str  # folder name under the data root
    list_files: tuple[str, ...]  # relative to the folder; the first one identifies the folder
    source: str  # where to get the data
    eval_mode: str
    default_ks: tuple[int, ...]
    images: dict[str, int]  # split -> official image count
    classes: dict[str, int]  # split, or splits joined by "+", -> official class count
    read: Callable[[Path], dict[str, ImageList]]

    def error(self, what: str, todo: str = "") -> DataError:
        """A DataError ``"<title>: <what>; <todo>"``; ``todo`` defaults to where to get the data."""
        return DataError(f"{self.title}: {what}; {todo or f'get the official copy from {self.source}'}")

    def describe_lists(self, folder: Path) -> str:
        return " + ".join(str(folder / name) for name in self.list_files)


def resolve_data_root(root: str | os.PathLike[str] | None, spec: OfficialDataset) -> Path:
    """``root``, or ``$HARNESS_DATA`` when it is None; DataError when neither is given or it does not
    exist."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ROOT_ENV, "")
        if not root:
            raise spec.error(
                "no data root given",
                f"set {DATA_ROOT_ENV}=DIR, the config field data.root or --set data.root=DIR, where DIR "
                f"holds {spec.folder}/ (get it from {spec.source})",
            )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise spec.error(
            f"the data root {path} does not exist or is not a folder",
            f"point data.root / {DATA_ROOT_ENV} at the folder holding {spec.folder}/",
        )
    return path


def find_dataset_folder(spec: OfficialDataset, root: str | os.PathLike[str] | None) -> Path:
    """``<root>/<spec.folder>``, or ``root`` itself when it is the dataset folder
    (it holds the first list file)."""
    data_root = resolve_data_root(root, spec)
    for folder in (data_root / spec.folder, data_root):
        if (folder / spec.list_files[0]).exists():  # a FIFO or folder there is refused when it is read
            return folder
    raise spec.error(
        f"not found: expected {data_root / spec.folder / spec.list_files[0]} "
        f"(or {data_root / spec.list_files[0]} with the root at the dataset folder)",
        f"get it from {spec.source} and extract it so that {spec.folder}/ lies under {data_root}",
    )


def regular_file(spec: OfficialDataset, path: Path) -> Path:
    """``path`` when it is a regular file; DataError when it is missing or something else (a FIFO or a device
    would block the reader forever, a folder cannot be read), decided with ``stat`` before any ``open``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise spec.error(f"missing list file {path}") from None
    except OSError as err:
        raise spec.error(f"cannot read list file {path} ({err.strerror or type(err).__name__})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise spec.error(f"list file {path} is {kind}, not a regular file")
    return path


def read_lines(spec: OfficialDataset, path: Path) -> list[str]:
    """The lines of a list file; DataError if it is missing, not a regular file or not text."""
    try:
        return regular_file(spec, path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise spec.error(f"cannot read list file {path} ({type(err).__name__})") from None


@dataclass(frozen=True)
class Table:
    """The rows of a list file: one list of strings per column, and the file line number of each row."""

    path: Path
    columns: dict[str, list[str]]
    line_numbers: list[int]

    def __getitem__(self, column: str) -> list[str]:
        return self.columns[column]

    def __len__(self) -> int:
        return len(self.line_numbers)

    def where(self, row: int) -> str:
        """``<path>:<line>`` of row ``row``, for error messages."""
        return f"{self.path}:{self.line_numbers[row]}"


def parse_table(
    spec: OfficialDataset,
    path: Path,
    lines: Sequence[str],
    columns: Sequence[str],
    *,
    header: bool,
    first_line: int = 1,
) -> Table:
    """Whitespace-separated rows -> a :class:`Table`; ``header``: the first row names the columns.

    ``first_line`` is the line number of ``lines[0]`` in the file, for error messages. Blank lines are
    skipped.
    """
    if header:
        found = lines[0].split() if lines else []
        if found != list(columns):
            raise spec.error(
                f"{path}:{first_line} has header {' '.join(found)!r}, expected {' '.join(columns)!r}"
            )
        lines, first_line = lines[1:], first_line + 1
    table = Table(path, {name: [] for name in columns}, [])
    for number, line in enumerate(lines, start=first_line):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(columns):
            raise spec.error(
                f"{path}:{number} has {len(fields)} fields, expected {len(columns)} ({' '.join(columns)})"
            )
        for name, value in zip(columns, fields, strict=True):
            table.columns[name].append(value)
        table.line_numbers.append(number)
    return table


def read_table(spec: OfficialDataset, path: Path, columns: Sequence[str], *, header: bool) -> Table:
    """:func:`parse_table` over the whole file ``path``."""
    return parse_table(spec, path, read_lines(spec, path), columns, header=header)


def int_column(spec: OfficialDataset, table: Table, name: str) -> np.ndarray:
    """Column ``name`` of ``table`` as integers; DataError naming the file and line of the first
    non-integer."""
    numbers = []
    for row, value in enumerate(table[name]):
        try:
            numbers.append(int(value))
        except ValueError:
            raise spec.error(
                f"{table.where(row)}: column {name} holds {value!r}, expected an integer",
                f"restore the official file from {spec.source}",
            ) from None
    return np.array(numbers, dtype=np.int64)


def unique_int_column(spec: OfficialDataset, table: Table, name: str) -> np.ndarray:
    """:func:`int_column`, refusing a value that repeats (DataError naming both lines)."""
    values = int_column(spec, table, name)
    first_row: dict[int, int] = {}
    for row, value in enumerate(values.tolist()):
        if value in first_row:
            raise spec.error(
                f"{table.where(row)}: {name} {value} repeats line {table.line_numbers[first_row[value]]}; "
                "an id must name one image",
                f"remove the duplicate or restore the official file from {spec.source}",
            )
        first_row[value] = row
    return values


def split_by_class_range(
    spec: OfficialDataset, path: Path, images: ImageList, ranges: dict[str, tuple[int, int]]
) -> dict[str, ImageList]:
    """Split by original class id: ``ranges`` maps a split to its inclusive class-id range."""
    covered = np.zeros(len(images.class_ids), dtype=bool)
    splits = {}
    for split, (low, high) in ranges.items():
        in_split = (images.class_ids >= low) & (images.class_ids <= high)
        splits[split] = images.select(in_split)
        covered |= in_split
    if not covered.all():
        low, high = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())
        raise spec.error(
            f"{path}: class id {images.class_ids[~covered][0]} is outside the official range {low}-{high}"
        )
    return splits


def check_splits(
    spec: OfficialDataset, folder: Path, lists: dict[str, ImageList], *, strict_counts: bool
) -> None:
    """Every split non-empty, train classes disjoint from the evaluation classes, every image listed once,
    official counts if strict."""
    where = spec.describe_lists(folder)
    for split, images in lists.items():
        if not images.files:
            raise spec.error(f"the {split} split read from {where} is empty")
    shared = np.intersect1d(lists["train"].class_ids, evaluation_classes(lists))
    if shared.size:
        raise spec.error(
            f"{where}: class {shared[0]} is in both the train and the evaluation splits",
            f"the splits must be class-disjoint; restore the official list files from {spec.source}",
        )
    _check_listed_once(spec, where, lists)
    if not strict_counts:
        return
    counts = [(split, len(lists[split].files), expected, "images") for split, expected in spec.images.items()]
    for group, expected in spec.classes.items():
        class_ids = np.concatenate([lists[split].class_ids for split in group.split("+")])
        counts.append((group, len(np.unique(class_ids)), expected, "classes"))
    for group, found, expected, unit in counts:
        if found != expected:
            raise spec.error(
                f"the {group} split read from {where} has {found:,} {unit}, expected {expected:,} "
                "(the official count)",
                f"use the complete copy from {spec.source}, {NON_STRICT_HINT}",
            )


def _check_listed_once(spec: OfficialDataset, where: str, lists: dict[str, ImageList]) -> None:
    """DataError for an image file listed twice: in a train and an evaluation class it leaks test images into
    training; anywhere else it gives one image two labels (or a query itself as its match)."""
    first: dict[str, tuple[str, int]] = {}
    for split, images in lists.items():
        for name, class_id in zip(images.files, images.class_ids.tolist(), strict=True):
            key = os.path.normpath(name)
            if key not in first:
                first[key] = (split, class_id)
                continue
            other_split, other_class = first[key]
            leak = "train" in (split, other_split) and split != other_split
            raise spec.error(
                f"{where}: image {name} is listed twice, in class {other_class} ({other_split}) and class "
                f"{class_id} ({split})"
                + ("; a test image in training leaks across the class-disjoint split" if leak else ""),
                f"list each image once; restore the official list files from {spec.source}",
            )


def evaluation_classes(lists: dict[str, ImageList]) -> np.ndarray:
    """The sorted class ids of every split but train (test, or query and gallery together)."""
    return np.unique(
        np.concatenate([images.class_ids for split, images in lists.items() if split != "train"])
    )


def build_official_splits(
    spec: OfficialDataset,
    root: str | os.PathLike[str] | None,
    *,
    train_transform: Transform,
    eval_transform: Transform,
    val_fraction: float,
    val_seed: int,
    strict_counts: bool,
    val_folds: int = 0,
    val_fold: int = 0,
    cache: ResizeRule | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DatasetSplits:
    """Read, check and assemble one official benchmark (labels 0..C-1 per split; query+gallery share one).

    ``cache``: read the images from the pre-decoded cache of that resize rule in ``cache_dir`` (built
    now when missing; :mod:`harness.data.decoded_cache`).
    """
    folder = find_dataset_folder(spec, root)
    lists = spec.read(folder)
    check_splits(spec, folder, lists, strict_counts=strict_counts)

    def dataset(images: ImageList, transform: Transform, classes: np.ndarray | None = None) -> ImageDataset:
        return ImageDataset(
            folder,
            images.files,
            relabel(images.class_ids, classes),
            images.class_ids,
            transform,
            title=spec.title,
            source=spec.source,
        )

    train_idx, val_idx = split_classes(
        lists["train"].class_ids, val_fraction, val_seed, folds=val_folds, fold=val_fold
    )
    datasets = {"train": dataset(lists["train"].select(train_idx), train_transform)}
    if val_idx.size:
        datasets["val"] = dataset(lists["train"].select(val_idx), eval_transform)
    shared_classes = evaluation_classes(lists)
    for split, images in lists.items():
        if split != "train":
            datasets[split] = dataset(images, eval_transform, shared_classes)
    for built in datasets.values():
        built.verify()
    if cache is not None:
        cached, _, _ = cache_splits(datasets, cache, name=spec.name, cache_dir=cache_dir)
        return DatasetSplits(**cached, eval_mode=spec.eval_mode, default_ks=spec.default_ks)
    return DatasetSplits(**datasets, eval_mode=spec.eval_mode, default_ks=spec.default_ks)


OFFICIAL_OPTIONS: dict[str, Any] = {"resize_size": None, "train_resize": False}
"""The ``data.options`` the official benchmarks take (see :func:`harness.data.transforms.build_transform`)."""


def cache_rule(request: DatasetRequest) -> ResizeRule:
    """The decoded cache's resize rule for ``request``: the transforms' ``resize_size`` and interpolation,
    and torch crops for ``decoded_cache: fast``."""
    spec = get_convention(request.convention)
    given = {**OFFICIAL_OPTIONS, **request.options}["resize_size"]
    size = eval_resize_size(request.image_size, spec.crop_pct) if given is None else int(given)
    return ResizeRule(size, spec.interpolation, "torch" if request.decoded_cache == "fast" else "pil")


def register_official(spec: OfficialDataset) -> DatasetEntry:
    """Register ``spec`` in :data:`~harness.data.registry.DATASETS`: its metadata and the shared builder."""

    def build(request: DatasetRequest) -> DatasetSplits:
        given = {**OFFICIAL_OPTIONS, **request.options}
        train_resize, convention = given["train_resize"], request.convention
        shape: dict[str, Any] = {"image_size": request.image_size, "crop_scale": request.crop_scale}
        shape["resize_size"] = given["resize_size"]
        return build_official_splits(
            spec,
            request.root,
            train_transform=build_transform(convention, train=True, train_resize=train_resize, **shape),
            eval_transform=build_transform(convention, train=False, **shape),
            val_fraction=request.val_fraction,
            val_seed=request.val_seed,
            val_folds=request.val_folds,
            val_fold=request.val_fold,
            strict_counts=request.strict_counts,
            cache=cache_rule(request) if request.decoded_cache else None,
            cache_dir=request.cache_dir,
        )

    def train_classes(request: DatasetRequest) -> np.ndarray:
        folder = find_dataset_folder(spec, request.root)
        lists = spec.read(folder)
        check_splits(spec, folder, lists, strict_counts=request.strict_counts)
        return lists["train"].class_ids

    entry = DatasetEntry(
        name=spec.name,
        summary=f"{spec.title}, read from its official files ({spec.folder}/ under the data root)",
        factory=build,
        title=spec.title,
        eval_mode=spec.eval_mode,
        default_ks=spec.default_ks,
        image_size=224,
        convention="bninception",
        options=OFFICIAL_OPTIONS,
        train_classes=train_classes,
    )
    DATASETS[spec.name] = entry
    return entry
