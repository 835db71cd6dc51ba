"""The fixture trees of the four official datasets, tiny, in each dataset's exact layout (shared by the loader
and fetch tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

PER_CLASS = 3


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def write_images(
    folder: Path, class_ids: list[int], name: Callable[[int, int], str]
) -> list[tuple[str, int]]:
    """PER_CLASS images per class at ``folder / name(class_id, k)``; returns (relative path, class id)."""
    rows = []
    for class_id in class_ids:
        for k in range(PER_CLASS):
            relative = name(class_id, k)
            write_jpeg(folder / relative, seed=len(rows))
            rows.append((relative, class_id))
    return rows


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_cub(root: Path) -> Path:
    folder = root / "CUB_200_2011"
    rows = write_images(
        folder / "images", [1, 2, 3, 100, 101, 150, 200], lambda c, k: f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
    )
    write_lines(folder / "images.txt", [f"{i} {path}" for i, (path, _) in enumerate(rows, start=1)])
    write_lines(folder / "image_class_labels.txt", [f"{i} {c}" for i, (_, c) in enumerate(rows, start=1)])
    write_lines(folder / "train_test_split.txt", [f"{i} {i % 2}" for i in range(1, len(rows) + 1)])
    return folder


def make_cars(root: Path) -> Path:
    folder = root / "cars196"
    rows = write_images(folder, [1, 2, 50, 98, 99, 150, 196], lambda c, k: f"car_ims/{c:03d}{k:03d}.jpg")
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(rows)), dtype=[(name, "O") for name in fields])
    for i, (path, class_id) in enumerate(rows):
        annotations[0, i] = (path, 1, 2, 20, 18, class_id, i % 2)
    scipy.io.savemat(
        folder / "cars_annos.mat",
        {"annotations": annotations, "class_names": np.array(["a", "b"], dtype=object)},
    )
    return folder


def sop_lines(rows: list[tuple[str, int]], first_id: int = 1) -> list[str]:
    return ["image_id class_id super_class_id path"] + [
        f"{i} {c} {1 + c % 2} {path}" for i, (path, c) in enumerate(rows, start=first_id)
    ]


def make_sop(root: Path) -> Path:
    folder = root / "Stanford_Online_Products"
    name = lambda c, k: f"bicycle_final/{c}_{k}.JPG"  # noqa: E731
    train = write_images(folder, [1, 2, 3, 4], name)
    test = write_images(folder, [11319, 11320, 22634], name)
    write_lines(folder / "Ebay_train.txt", sop_lines(train))
    write_lines(folder / "Ebay_test.txt", sop_lines(test, first_id=len(train) + 1))
    return folder


def make_inshop(root: Path) -> Path:
    folder = root / "InShop"
    rows = write_images(
        folder, [1, 2, 3, 4, 7, 8, 9], lambda c, k: f"img/WOMEN/Dresses/id_{c:08d}/{k:02d}_1_front.jpg"
    )
    status = [
        "train" if c <= 4 else ("query" if k == 0 else "gallery")
        for (_, c), k in zip(rows, [0, 1, 2] * 7, strict=True)
    ]
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    lines += [f"{path}  id_{c:08d}  {s}" for (path, c), s in zip(rows, status, strict=True)]
    write_lines(folder / "Eval" / "list_eval_partition.txt", lines)
    return folder


TREES = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop}
# The image and class counts of each tree above, in the form of OfficialDataset.images / .classes.
FIXTURE_COUNTS = {
    "cub": ({"train": 12, "test": 9}, {"train": 4, "test": 3}),
    "cars": ({"train": 12, "test": 9}, {"train": 4, "test": 3}),
    "sop": ({"train": 12, "test": 9}, {"train": 4, "test": 3}),
    "inshop": ({"train": 12, "query": 3, "gallery": 6}, {"train": 4, "query+gallery": 3}),
}
