"""CUB-200-2011 (Caltech-UCSD Birds): classes 1-100 train (5,864 images), 101-200 test (5,924).

Layout: ``<root>/CUB_200_2011/images.txt`` (``<image_id> <path>``), ``image_class_labels.txt``
(``<image_id> <class_id>``) and ``images/<path>``. ``train_test_split.txt`` (a per-image classification
split) is deliberately not used.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.official import (
    ImageList,
    OfficialDataset,
    int_column,
    read_table,
    split_by_class_range,
    unique_int_column,
)

CLASS_RANGES = {"train": (1, 100), "test": (101, 200)}


def read_cub(folder: Path) -> dict[str, ImageList]:
    """Join ``images.txt`` and ``image_class_labels.txt`` on the image id and split by class id.

    Both files must list the same image ids, each once: a repeated id, an image without a label and a
    label without an image are DataErrors naming the file and line (never a silently dropped image).
    """
    images_file, labels_file = (folder / name for name in CUB.list_files)
    images = read_table(CUB, images_file, ("image_id", "path"), header=False)
    labels = read_table(CUB, labels_file, ("image_id", "class_id"), header=False)
    image_ids = unique_int_column(CUB, images, "image_id").tolist()
    label_ids = unique_int_column(CUB, labels, "image_id").tolist()
    path_of = dict(zip(image_ids, images["path"], strict=True))
    for row, image_id in enumerate(label_ids):
        if image_id not in path_of:
            raise CUB.error(
                f"{labels.where(row)} labels image id {image_id}, which {images_file} does not list"
            )
    labelled = set(label_ids)
    for row, image_id in enumerate(image_ids):
        if image_id not in labelled:
            raise CUB.error(
                f"{images.where(row)} lists image id {image_id}, which {labels_file} does not label "
                f"({len(label_ids):,} labels for {len(image_ids):,} images: a short or damaged label file)"
            )
    files = [f"images/{path_of[image_id]}" for image_id in label_ids]
    class_ids = int_column(CUB, labels, "class_id")
    splits = split_by_class_range(CUB, labels_file, ImageList(files, class_ids), CLASS_RANGES)
    for row, (image_id, class_id) in enumerate(zip(label_ids, class_ids.tolist(), strict=True)):
        folder_class = class_of_folder(path_of[image_id])
        if folder_class is not None and folder_class != class_id:
            raise CUB.error(
                f"{labels.where(row)} labels image id {image_id} class {class_id}, but {images_file} puts it "
                f"in the folder of class {folder_class} ({path_of[image_id]})",
                f"restore the official list files from {CUB.source}",
            )
    return splits


def class_of_folder(path: str) -> int | None:
    """The class id of an image path's folder, ``012.Yellow_breasted_Chat/x.jpg`` -> 12; None without one."""
    number, dot, _ = path.partition("/")[0].partition(".")
    return int(number) if dot and number.isdecimal() else None


CUB = OfficialDataset(
    name="cub",
    title="CUB-200-2011",
    folder="CUB_200_2011",
    list_files=("images.txt", "image_class_labels.txt"),
    source="https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    eval_mode="leave_one_out",
    default_ks=(1, 2, 4, 8, 16, 32),
    images={"train": 5864, "test": 5924},
    classes={"train": 100, "test": 100},
    read=read_cub,
)
