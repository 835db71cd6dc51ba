"""Stanford Online Products: 11,318 train classes (59,551 images), 11,316 test classes (60,502).

Layout: ``<root>/Stanford_Online_Products/Ebay_train.txt`` and ``Ebay_test.txt`` with the header
``image_id class_id super_class_id path`` and image paths relative to the folder
(``bicycle_final/111085122871_0.JPG``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.official import ImageList, OfficialDataset, int_column, read_table, unique_int_column

COLUMNS = ("image_id", "class_id", "super_class_id", "path")


def read_sop(folder: Path) -> dict[str, ImageList]:
    """``Ebay_train.txt`` is the train split, ``Ebay_test.txt`` the test split."""
    splits = {}
    for split, name in zip(("train", "test"), SOP.list_files, strict=True):
        path = folder / name
        table = read_table(SOP, path, COLUMNS, header=True)
        unique_int_column(SOP, table, "image_id")
        class_ids = int_column(SOP, table, "class_id")
        if class_ids.size and class_ids.min() < 1:
            row = int(np.argmax(class_ids < 1))
            raise SOP.error(
                f"{table.where(row)}: class_id {class_ids[row]}, expected a class id from 1 (the official "
                "ids run 1-22,634)",
                f"restore the official file from {SOP.source}",
            )
        splits[split] = ImageList(table["path"], class_ids)
    return splits


SOP = OfficialDataset(
    name="sop",
    title="Stanford Online Products",
    folder="Stanford_Online_Products",
    list_files=("Ebay_train.txt", "Ebay_test.txt"),
    source="https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip)",
    eval_mode="leave_one_out",
    default_ks=(1, 10, 100, 1000),
    images={"train": 59551, "test": 60502},
    classes={"train": 11318, "test": 11316},
    read=read_sop,
)
