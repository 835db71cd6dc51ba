"""The four official loaders on tiny fixture trees in each official format, and every error path."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from data_trees import PER_CLASS, TREES, make_cars, make_cub, sop_lines, write_jpeg, write_lines
from PIL import Image

from harness.data import DATA_ROOT_ENV, MPerClassBatchSampler, build_splits, verify_images
from harness.errors import DataError, UserError

IMAGE_SIZE = 32


# split -> original class ids of the fixture trees (data_trees.py)
EXPECTED = {
    "cub": {"train": [1, 2, 3, 100], "test": [101, 150, 200]},
    "cars": {"train": [1, 2, 50, 98], "test": [99, 150, 196]},
    "sop": {"train": [1, 2, 3, 4], "test": [11319, 11320, 22634]},
    "inshop": {"train": [1, 2, 3, 4], "query": [7, 8, 9], "gallery": [7, 8, 9]},
}
OFFICIAL_TRAIN_IMAGES = {"cub": "5,864", "cars": "8,054", "sop": "59,551", "inshop": "25,882"}


def build(name: str, root: Path | None, **options) -> object:
    return build_splits(name, root, image_size=IMAGE_SIZE, strict_counts=False, **options)


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", TREES)
def test_reads_the_official_layout(name: str, tmp_path: Path) -> None:
    TREES[name](tmp_path)
    splits = build(name, tmp_path)
    for split, classes in EXPECTED[name].items():
        dataset = getattr(splits, split)
        per_class = 1 if split == "query" else 2 if split == "gallery" else PER_CLASS
        assert len(dataset) == len(classes) * per_class
        assert sorted(set(dataset.class_ids.tolist())) == classes
        assert dataset.labels.dtype == np.int64
        image, label = dataset[0]
        assert isinstance(image, torch.Tensor) and image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert isinstance(label, int) and label == dataset.labels[0]
    assert splits.val is None
    if name == "inshop":
        assert splits.eval_mode == "query_gallery" and splits.test is None
        assert splits.default_ks == (1, 10, 20, 30, 40, 50)
    else:
        assert splits.eval_mode == "leave_one_out" and splits.query is None and splits.gallery is None
        assert splits.default_ks == ((1, 10, 100, 1000) if name == "sop" else (1, 2, 4, 8, 16, 32))


@pytest.mark.parametrize("name", TREES)
def test_labels_are_0_to_c_minus_1_and_keep_the_class_ids(name: str, tmp_path: Path) -> None:
    TREES[name](tmp_path)
    splits = build(name, tmp_path)
    for split in EXPECTED[name]:
        dataset = getattr(splits, split)
        ranks = np.searchsorted(np.unique(dataset.class_ids), dataset.class_ids)
        if split in ("query", "gallery"):  # one label space over query + gallery
            ranks = np.searchsorted(
                np.unique(np.concatenate([splits.query.class_ids, splits.gallery.class_ids])),
                dataset.class_ids,
            )
        assert np.array_equal(dataset.labels, ranks)


@pytest.mark.parametrize("name", TREES)
def test_validation_split_is_class_disjoint_and_uses_the_eval_transform(name: str, tmp_path: Path) -> None:
    TREES[name](tmp_path)
    splits = build(name, tmp_path, val_fraction=0.5, val_seed=1)
    train, val = set(splits.train.class_ids.tolist()), set(splits.val.class_ids.tolist())
    evaluated = (
        set(splits.test.class_ids.tolist())
        if splits.test is not None
        else set(splits.query.class_ids.tolist())
    )
    assert len(train) == len(val) == 2
    assert train | val == set(EXPECTED[name]["train"])
    assert not train & val and not val & evaluated and not train & evaluated
    assert sorted(set(splits.val.labels.tolist())) == [0, 1]
    assert torch.equal(splits.val[0][0], splits.val[0][0]), "val uses the deterministic evaluation transform"
    again = build(name, tmp_path, val_fraction=0.5, val_seed=1)
    assert np.array_equal(again.val.class_ids, splits.val.class_ids)


def test_root_may_be_harness_data_or_the_dataset_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_cub(tmp_path)
    direct = build("cub", folder)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    from_env = build("cub", None)
    assert direct.train.files == from_env.train.files and direct.train.root == from_env.train.root == folder


@pytest.mark.parametrize("convention", ["imagenet", "grey"])
def test_convention_and_image_size_reach_the_datasets(convention: str, tmp_path: Path) -> None:
    make_cub(tmp_path)
    splits = build_splits("cub", tmp_path, image_size=16, convention=convention, strict_counts=False)
    channels = 1 if convention == "grey" else 3
    assert splits.train[0][0].shape == splits.test[0][0].shape == (channels, 16, 16)


def test_train_split_feeds_the_sampler_through_a_dataloader(tmp_path: Path) -> None:
    make_cub(tmp_path)
    train = build("cub", tmp_path).train
    loader = torch.utils.data.DataLoader(
        train, batch_sampler=MPerClassBatchSampler(train.labels, 2, 2, seed=0)
    )
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert len(set(labels.tolist())) == 2


@pytest.mark.parametrize("name", TREES)
def test_strict_counts_name_the_official_count(name: str, tmp_path: Path) -> None:
    TREES[name](tmp_path)
    with pytest.raises(DataError) as err:
        build_splits(name, tmp_path)
    message = assert_one_line(err)
    assert f"expected {OFFICIAL_TRAIN_IMAGES[name]}" in message and "has 12 images" in message
    assert "strict_counts=False" in message


def test_missing_root_and_missing_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        build("cub", tmp_path / "nowhere")
    assert_one_line(err)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DataError, match=f"no data root given; set {DATA_ROOT_ENV}=DIR") as err:
        build("sop", None)
    assert_one_line(err)
    with pytest.raises(
        DataError, match=r"not found: expected .*Stanford_Online_Products/Ebay_train.txt"
    ) as err:
        build("sop", tmp_path)
    assert "cvgl.stanford.edu" in assert_one_line(err)


def share_cub_image(folder: Path) -> None:
    """List one image file (in a folder without a class number) as image 1 (class 1) and 13 (class 101)."""
    write_jpeg(folder / "images" / "shared" / "bird.jpg", seed=99)
    for line in (1, 13):
        replace_line(folder / "images.txt", line, f"{line} shared/bird.jpg")


def share_cars_image(folder: Path) -> None:
    """Give annotation 13 (class 99, a test class) the image file of annotation 1 (class 1)."""
    annotations = scipy.io.loadmat(folder / "cars_annos.mat")["annotations"]
    annotations[0, 12]["relative_im_path"] = annotations[0, 0]["relative_im_path"]
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annotations})


PARTITION = Path("Eval") / "list_eval_partition.txt"
LEAK = "a test image in training leaks across the class-disjoint split"
# Damages of the fixture trees that are leaks, impossible labels or list files no reader may open.
LIST_FILE_FAULTS = [
    (
        "cub",
        share_cub_image,
        f"image images/shared/bird.jpg is listed twice, in class 1 .train. and class 101 .test.; {LEAK}",
    ),
    (
        "cars",
        share_cars_image,
        rf"image car_ims/001000.jpg is listed twice, in class 1 .train. and class 99 .test.; {LEAK}",
    ),
    (
        "sop",
        lambda f: replace_line(f / "Ebay_test.txt", 2, "13 11319 1 bicycle_final/1_0.JPG"),
        rf"image bicycle_final/1_0.JPG is listed twice, in class 1 .train. and class 11319 .test.; {LEAK}",
    ),
    (
        "inshop",
        lambda f: replace_in(f / PARTITION, "id_00000007/01_1_front.jpg", "id_00000007/00_1_front.jpg"),
        r"id_00000007/00_1_front.jpg is listed twice, in class 7 .query. and class 7 .gallery.; list each",
    ),
    (
        "sop",
        lambda f: replace_line(f / "Ebay_train.txt", 2, "1 -1 2 bicycle_final/1_0.JPG"),
        r"Ebay_train.txt:2: class_id -1, expected a class id from 1",
    ),
    (
        "cub",
        lambda f: replace_line(f / "image_class_labels.txt", 2, "2 2"),
        r"image_class_labels.txt:2 labels image id 2 class 2, but .*images.txt puts it in the folder of "
        "class 1",
    ),
    (
        "inshop",
        lambda f: replace_in(f / PARTITION, "id_00000009  gallery", "id_00000009  query"),
        r"list_eval_partition.txt:\d+: query item id_00000009 has no gallery image "
        r"\(1 query item\(s\) have none\)",
    ),
    (
        "cub",
        lambda f: ((f / "image_class_labels.txt").unlink(), os.mkfifo(f / "image_class_labels.txt")),
        r"list file .*image_class_labels.txt is a FIFO, not a regular file",
    ),
    (
        "sop",
        lambda f: ((f / "Ebay_test.txt").unlink(), (f / "Ebay_test.txt").symlink_to(os.devnull)),
        r"list file .*Ebay_test.txt is a device or socket, not a regular file",
    ),
    (
        "cars",
        lambda f: ((f / "cars_annos.mat").unlink(), os.mkfifo(f / "cars_annos.mat")),
        r"list file .*cars_annos.mat is a FIFO, not a regular file",
    ),
    (
        "inshop",
        lambda f: ((f / PARTITION).unlink(), (f / PARTITION).mkdir()),
        r"list file .*list_eval_partition.txt is a folder, not a regular file",
    ),
]


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        (
            "cub",
            lambda f: (f / "image_class_labels.txt").unlink(),
            r"missing list file .*image_class_labels.txt",
        ),
        (
            "cub",
            lambda f: write_lines(f / "images.txt", ["1 a.jpg extra"]),
            r"images.txt:1 has 3 fields, expected 2",
        ),
        (
            "cub",
            lambda f: replace_line(f / "image_class_labels.txt", 2, "2 bird"),
            r"image_class_labels.txt:2: column class_id holds 'bird', expected an integer",
        ),
        (
            "cub",
            lambda f: replace_line(f / "image_class_labels.txt", 4, "999 1"),
            r"image_class_labels.txt:4 labels image id 999, which .*images.txt does not list",
        ),
        (
            "cub",
            lambda f: replace_line(f / "image_class_labels.txt", 1, "1 201"),
            "class id 201 is outside .* 1-200",
        ),
        (  # a repeated id would give one image the label of another
            "cub",
            lambda f: replace_line(f / "images.txt", 5, "2 101.Bird_101/Bird_101_0.jpg"),
            r"images.txt:5: image_id 2 repeats line 2; an id must name one image; remove the duplicate",
        ),
        (
            "cub",
            lambda f: replace_line(f / "image_class_labels.txt", 6, "3 1"),
            r"image_class_labels.txt:6: image_id 3 repeats line 3",
        ),
        (
            "sop",
            lambda f: replace_line(f / "Ebay_train.txt", 4, "1 3 2 bicycle_final/3_0.JPG"),
            r"Ebay_train.txt:4: image_id 1 repeats line 2",
        ),
        (
            "cars",
            lambda f: (f / "cars_annos.mat").write_bytes(b"not a mat file"),
            "cannot read .*cars_annos.mat",
        ),
        ("cars", lambda f: scipy.io.savemat(f / "cars_annos.mat", {"x": 1}), "no `annotations` struct array"),
        (
            "sop",
            lambda f: write_lines(f / "Ebay_test.txt", ["id class path"]),
            "header 'id class path', expected",
        ),
        ("sop", lambda f: (f / "Ebay_test.txt").write_bytes(b"\xff\xfe\x00"), "cannot read list file"),
        (
            "sop",
            lambda f: write_lines(f / "Ebay_test.txt", sop_lines([("bicycle_final/1_0.JPG", 1)])),
            "class 1 is in both the train and the evaluation splits",
        ),
        (
            "sop",
            lambda f: write_lines(f / "Ebay_test.txt", sop_lines([])),
            "the test split read from .* is empty",
        ),
        ("inshop", lambda f: truncate_lines(f / "Eval" / "list_eval_partition.txt", 5), "declares '21' rows"),
        (
            "inshop",
            lambda f: replace_in(f / "Eval" / "list_eval_partition.txt", "gallery", "galery"),
            "evaluation_status 'galery'",
        ),
        (
            "inshop",
            lambda f: replace_in(f / "Eval" / "list_eval_partition.txt", "id_00000001", "item1"),
            "item_id 'item1'",
        ),
        *LIST_FILE_FAULTS,
    ],
)
def test_bad_list_files_raise_one_line_data_errors(
    name: str, damage: Callable, message: str, tmp_path: Path
) -> None:
    damage(TREES[name](tmp_path))
    with pytest.raises(DataError, match=message) as err:
        build(name, tmp_path)
    assert_one_line(err)


def replace_line(path: Path, number: int, text: str) -> None:
    """Replace line ``number`` (1-based) of ``path`` by ``text``."""
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    write_lines(path, lines)


def truncate_lines(path: Path, keep: int) -> None:
    write_lines(path, path.read_text().splitlines()[:keep])


def replace_in(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_missing_image_fails_at_build_time(tmp_path: Path) -> None:
    folder = make_cars(tmp_path)
    (folder / "car_ims" / "150001.jpg").unlink()
    with pytest.raises(
        DataError, match=r"Cars-196: 1 of 9 image files are missing .*car_ims/150001.jpg"
    ) as err:
        build("cars", tmp_path)
    assert_one_line(err)


def test_truncated_image_fails_when_loaded_naming_the_file(tmp_path: Path) -> None:
    folder = make_cub(tmp_path)
    victim = folder / "images" / "101.Bird_101" / "Bird_101_0.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    splits = build("cub", tmp_path)  # existence is checked at build time, decoding is not
    verify_images(splits)
    index = splits.test.files.index("images/101.Bird_101/Bird_101_0.jpg")
    with pytest.raises(DataError, match=r"CUB-200-2011: cannot read image .*Bird_101_0.jpg") as err:
        splits.test[index]
    assert_one_line(err)
    with pytest.raises(DataError, match=r"Bird_101_0\.jpg"):
        verify_images(splits, decode=True)
    victim.write_bytes(b"")
    with pytest.raises(DataError, match=r"Bird_101_0\.jpg"):
        splits.test[index]


def test_unreadable_image_in_a_dataloader_worker_stays_one_line(tmp_path: Path) -> None:
    folder = make_cub(tmp_path)
    for image in (folder / "images").rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    train = build("cub", tmp_path).train
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=1)
    with pytest.raises(DataError, match=r"^CUB-200-2011: cannot read image .*\.jpg") as err:
        next(iter(loader))
    assert "Traceback" not in assert_one_line(err)


def test_unknown_dataset_name_suggests_close_matches(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'CUB200'; did you mean 'cub'\?") as err:
        build("CUB200", tmp_path)
    assert_one_line(err)
    with pytest.raises(UserError, match="expected one of 'cub', 'cars', 'sop', 'inshop', 'glyphs'"):
        build("mnist", tmp_path)


def test_bad_convention_fails_before_reading_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown input convention 'rgb'"):
        build_splits("cub", tmp_path, convention="rgb")


def test_glyphs_dispatches_to_the_glyph_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("harness.data.glyphs")
    fake.build_glyph_splits = lambda cache_dir, **kwargs: calls.append((cache_dir, kwargs)) or "splits"
    monkeypatch.setitem(sys.modules, "harness.data.glyphs", fake)
    splits = build_splits(
        "glyphs",
        None,
        cache_dir=tmp_path,
        image_size=32,
        convention="grey",
        val_fraction=0.2,
        val_seed=4,
        strict_counts=True,
        crop_scale=(0.5, 1.0),
        num_classes=40,
    )
    assert splits == "splits"
    options = {
        "val_fraction": 0.2,
        "val_seed": 4,
        "val_folds": 0,
        "val_fold": 0,
        "image_size": 32,
        "convention": "grey",
        "num_classes": 40,
    }
    assert calls == [(tmp_path, options)]


def test_options_meant_for_glyphs_are_refused_by_real_datasets(tmp_path: Path) -> None:
    make_cub(tmp_path)
    with pytest.raises(UserError, match=r"unknown data option.*'num_classes' for dataset 'cub'"):
        build("cub", tmp_path, num_classes=40)


def test_strict_counts_accept_exact_counts_and_check_class_counts(tmp_path: Path) -> None:
    from dataclasses import replace

    from harness.data.cub import CUB
    from harness.data.official import build_official_splits
    from harness.data.transforms import build_transform

    make_cub(tmp_path)
    transform = build_transform("imagenet", IMAGE_SIZE, train=False)
    options = {"train_transform": transform, "eval_transform": transform, "val_fraction": 0.0, "val_seed": 0}
    exact = replace(CUB, images={"train": 12, "test": 9}, classes={"train": 4, "test": 3})
    assert len(build_official_splits(exact, tmp_path, strict_counts=True, **options).test) == 9
    wrong_classes = replace(exact, classes={"train": 4, "test": 5})
    with pytest.raises(DataError, match=r"the test split read from .* has 3 classes, expected 5"):
        build_official_splits(wrong_classes, tmp_path, strict_counts=True, **options)


@pytest.mark.parametrize("short", ["image_class_labels.txt", "images.txt"])
def test_cub_refuses_ids_missing_from_either_list_even_without_strict_counts(
    short: str, tmp_path: Path
) -> None:
    folder = make_cub(tmp_path)
    truncate_lines(folder / short, 18)  # 21 images: the last 3 lose their label (or their path)
    expected = (
        r"images.txt:19 lists image id 19, which .*image_class_labels.txt does not label \(18 labels for 21"
        if short == "image_class_labels.txt"
        else r"image_class_labels.txt:19 labels image id 19, which .*images.txt does not list"
    )
    with pytest.raises(DataError, match=expected) as err:
        build("cub", tmp_path)  # strict_counts=False
    assert_one_line(err)


def write_cars_classes(folder: Path, classes: list[object]) -> None:
    """Rewrite cars_annos.mat with the ``class`` field of annotation i set to ``classes[i]``."""
    annotations = scipy.io.loadmat(folder / "cars_annos.mat")["annotations"]
    for i, value in enumerate(classes):
        annotations[0, i]["class"] = np.array([[value]])
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annotations})


@pytest.mark.parametrize("bad", [1.7, 98.5, float("nan")])
def test_cars_refuses_a_class_that_is_not_an_integer(bad: float, tmp_path: Path) -> None:
    folder = make_cars(tmp_path)
    write_cars_classes(folder, [1, 1, bad])
    with pytest.raises(
        DataError, match=r"cars_annos.mat: annotation 3 has class .*, expected an integer"
    ) as err:
        build("cars", tmp_path)
    assert_one_line(err)


def test_cars_accepts_integral_floats_as_matlab_stores_them(tmp_path: Path) -> None:
    folder = make_cars(tmp_path)
    write_cars_classes(folder, [1.0, 1.0, 1.0])
    assert sorted(set(build("cars", tmp_path).train.class_ids.tolist())) == [1, 2, 50, 98]


def swap_first_cub_image(tmp_path: Path, save: Callable[[Path], None]) -> tuple[object, int]:
    """A CUB tree whose first image is the file ``save(path)`` writes; returns (train split, its index)."""
    folder = make_cub(tmp_path)
    replace_line(folder / "images.txt", 1, "1 001.Bird_1/Bird_1_0.png")
    save(folder / "images" / "001.Bird_1" / "Bird_1_0.png")
    train = build("cub", tmp_path).train
    return train, train.files.index("images/001.Bird_1/Bird_1_0.png")


def test_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path: Path) -> None:
    ramp = (np.arange(20 * 24, dtype=np.uint32).reshape(20, 24) * 136).astype(np.uint16)  # 0 .. 65144
    train, index = swap_first_cub_image(tmp_path, lambda path: Image.fromarray(ramp).save(path))
    with Image.open(train.path(index)) as raw:
        assert raw.mode in ("I;16", "I"), "the fixture must really be a 16-bit greyscale PNG"
    rgb = np.asarray(train.load(index))
    assert rgb.shape == (20, 24, 3) and rgb.dtype == np.uint8
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert rgb.min() == 0 and rgb.max() == 253 and 120 < rgb.mean() < 135  # a ramp, not pure white
    image, _ = train[index]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_32_bit_float_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    pixels = np.linspace(0, 1, 20 * 24, dtype=np.float32).reshape(20, 24)
    train, index = swap_first_cub_image(tmp_path, lambda path: Image.fromarray(pixels).save(path, "TIFF"))
    with pytest.raises(
        DataError, match=r"image .*Bird_1_0.png has F pixels .* convert it to an 8-bit"
    ) as err:
        train[index]
    assert_one_line(err)
