"""In-Shop Clothes Retrieval (DeepFashion): 3,997 train items (25,882 images); query 14,218 and gallery
12,612 images over 3,985 test items. Evaluated by querying the gallery.

Layout: ``<root>/InShop/Eval/list_eval_partition.txt`` (line 1 the number of rows, line 2 the header
``image_name item_id evaluation_status``, then one row per image with status train, query or gallery)
and the images under ``<root>/InShop/img/`` (``image_name`` is ``img/...`` relative to the folder).
Item ids ``id_00000002`` become class id 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.official import ImageList, OfficialDataset, parse_table, read_lines

COLUMNS = ("image_name", "item_id", "evaluation_status")
SPLITS = ("train", "query", "gallery")
ITEM_PREFIX = "id_"


def item_number(item_id: str) -> int:
    """``id_00000002`` -> 2; ValueError for anything else."""
    digits = item_id.removeprefix(ITEM_PREFIX)
    if digits == item_id or not digits.isdecimal():
        raise ValueError(item_id)
    return int(digits)


def read_inshop(folder: Path) -> dict[str, ImageList]:
    """Split the rows of ``list_eval_partition.txt`` by their evaluation status."""
    path = folder / INSHOP.list_files[0]
    lines = read_lines(INSHOP, path)
    declared = lines[0].strip() if lines else ""
    table = parse_table(INSHOP, path, lines[1:], COLUMNS, header=True, first_line=2)
    if not declared.isdecimal() or int(declared) != len(table["image_name"]):
        raise INSHOP.error(
            f"{path}: line 1 declares {declared!r} rows but the file holds "
            f"{len(table['image_name']):,} (truncated or edited?)"
        )
    unknown = sorted(set(table["evaluation_status"]) - set(SPLITS))
    if unknown:
        raise INSHOP.error(f"{path}: evaluation_status {unknown[0]!r}, expected one of {', '.join(SPLITS)}")
    try:
        class_ids = np.array([item_number(item) for item in table["item_id"]], dtype=np.int64)
    except ValueError as err:
        raise INSHOP.error(f"{path}: item_id {err.args[0]!r}, expected the form id_00000002") from None
    everything = ImageList(table["image_name"], class_ids)
    status = np.array(table["evaluation_status"])
    splits = {split: everything.select(status == split) for split in SPLITS}
    unmatched = np.setdiff1d(splits["query"].class_ids, splits["gallery"].class_ids)
    if unmatched.size:
        row = int(np.flatnonzero((status == "query") & np.isin(class_ids, unmatched))[0])
        raise INSHOP.error(
            f"{table.where(row)}: query item {table['item_id'][row]} has no gallery image "
            f"({unmatched.size:,} query item(s) have none), so its queries could never be answered right",
            f"every query item needs gallery images; restore the official file from {INSHOP.source}",
        )
    return splits


INSHOP = OfficialDataset(
    name="inshop",
    title="In-Shop Clothes Retrieval",
    folder="InShop",
    list_files=("Eval/list_eval_partition.txt",),
    source="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html "
    "(Eval/list_eval_partition.txt and Img/img.zip, unzipped to img/)",
    eval_mode="query_gallery",
    default_ks=(1, 10, 20, 30, 40, 50),
    images={"train": 25882, "query": 14218, "gallery": 12612},
    classes={"train": 3997, "query+gallery": 3985},
    read=read_inshop,
)
