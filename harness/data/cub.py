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
)

CLASS_RANGES = {"train": (1, 100), "test": (101, 200)}


def read_cub(folder: Path) -> dict[str, ImageList]:
    """Join ``images.txt`` and ``image_class_labels.txt`` on the image id and split by class id."""
    images_file, labels_file = (folder / name for name in CUB.list_files)
    images = read_table(CUB, images_file, ("image_id", "path"), header=False)
    labels = read_table(CUB, labels_file, ("image_id", "class_id"), header=False)
    path_of = dict(
        zip(
            int_column(CUB, images_file, "image_id", images["image_id"]).tolist(), images["path"], strict=True
        )
    )
    label_ids = int_column(CUB, labels_file, "image_id", labels["image_id"]).tolist()
    unknown = [image_id for image_id in label_ids if image_id not in path_of]
    if unknown:
        raise CUB.error(f"{labels_file} names image id {unknown[0]}, which {images_file} does not list")
    files = [f"images/{path_of[image_id]}" for image_id in label_ids]
    class_ids = int_column(CUB, labels_file, "class_id", labels["class_id"])
    return split_by_class_range(CUB, labels_file, ImageList(files, class_ids), CLASS_RANGES)


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
