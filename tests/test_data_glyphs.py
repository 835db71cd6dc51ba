"""The embedded glyphs benchmark: class list, deterministic rendering, the on-disk cache, the splits."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from harness.data import glyphs
from harness.data.glyphs import GlyphParams, build_glyph_splits, glyph_classes, load_or_render, render_glyphs
from harness.errors import UserError

SMALL = GlyphParams(num_classes=12, instances_per_class=5)
LATIN_A, GREEK_ALPHA, CYRILLIC_A = "\u0041", "\u0391", "\u0410"


@pytest.fixture(scope="module")
def small_images() -> glyphs.GlyphImages:
    return render_glyphs(SMALL)


@pytest.fixture
def small_splits(tmp_path):
    return build_glyph_splits(
        tmp_path, val_fraction=1 / 3, val_seed=0, num_classes=SMALL.num_classes, instances_per_class=5
    )


# ----------------------------------------------------------------------------------------- classes


def test_default_class_list_has_400_distinct_classes_in_disjoint_halves() -> None:
    classes = glyph_classes()
    assert len(classes.characters) == 400
    assert len(set(classes.characters)) == 400
    train, test = classes.characters[:200], classes.characters[200:]
    assert classes.num_train_classes == 200
    assert not set(train) & set(test)
    assert list(train) == sorted(train, key=ord) and list(test) == sorted(test, key=ord)
    assert all(len(faces) >= 16 for faces in classes.faces)


def test_latin_greek_and_cyrillic_a_are_one_class() -> None:
    classes = glyph_classes()
    assert classes.merged_into[GREEK_ALPHA] == LATIN_A
    assert classes.merged_into[CYRILLIC_A] == LATIN_A
    assert LATIN_A not in classes.merged_into
    assert sum(c in classes.characters for c in (LATIN_A, GREEK_ALPHA, CYRILLIC_A)) <= 1


def test_merge_lookalikes_keeps_the_first_and_distinct_shapes() -> None:
    kept, merged = glyphs.merge_lookalikes(
        ["A", GREEK_ALPHA, "B", CYRILLIC_A, "\u0412", "b", "\u017b", "\u0179"]
    )
    # Cyrillic Ve looks like B; Z with dot above and Z with acute differ
    assert kept == ["A", "B", "b", "\u017b", "\u0179"]
    assert merged == {GREEK_ALPHA: "A", CYRILLIC_A: "A", "\u0412": "B"}


def test_a_class_uses_only_the_faces_that_have_its_glyph() -> None:
    knight = "\u265e"  # in DejaVu Sans (all four) and Sans Mono (regular, bold) only
    faces = glyphs.faces_with_glyph(knight)
    assert faces == (0, 1, 2, 3, 8, 9)
    _, used = glyphs.render_class(knight, faces, GlyphParams(instances_per_class=40, min_fonts=6))
    assert set(used.tolist()) <= set(faces)
    assert len(set(used.tolist())) >= 4


def test_too_many_classes_is_a_user_error() -> None:
    with pytest.raises(UserError, match="num_classes"):
        glyph_classes(num_classes=5000)


# --------------------------------------------------------------------------------------- rendering


def test_rendering_shapes_dtypes_and_counts(small_images: glyphs.GlyphImages) -> None:
    n = SMALL.num_classes * SMALL.instances_per_class
    assert small_images.images.shape == (n, 32, 32) and small_images.images.dtype == np.uint8
    assert small_images.labels.dtype == np.int64
    assert np.bincount(small_images.labels).tolist() == [SMALL.instances_per_class] * SMALL.num_classes
    assert small_images.characters == glyph_classes(12).characters
    assert small_images.num_train_classes == 6
    assert small_images.images.std() > 10  # not blank


def test_rendering_is_deterministic_per_seed(small_images: glyphs.GlyphImages) -> None:
    again = render_glyphs(SMALL)
    assert again.images.tobytes() == small_images.images.tobytes()
    assert np.array_equal(again.faces, small_images.faces)
    other = render_glyphs(GlyphParams(num_classes=12, instances_per_class=5, seed=1))
    assert not np.array_equal(other.images, small_images.images)


def test_instances_do_not_depend_on_how_many_are_rendered() -> None:
    few, _ = glyphs.render_class("g", tuple(range(16)), GlyphParams(instances_per_class=3))
    more, _ = glyphs.render_class("g", tuple(range(16)), GlyphParams(instances_per_class=5))
    assert np.array_equal(few, more[:3])


def test_instances_of_a_class_differ_and_jitter_zero_is_clean() -> None:
    jittered, _ = glyphs.render_class("R", (0,), GlyphParams(instances_per_class=4))
    assert len({image.tobytes() for image in jittered}) == 4
    clean, _ = glyphs.render_class("R", (0,), GlyphParams(instances_per_class=2, jitter=0.0))
    assert np.array_equal(clean[0], clean[1])
    assert clean.min() == 0 and clean.max() == 255


# ------------------------------------------------------------------------------------------- cache


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch, small_images) -> None:
    first = load_or_render(tmp_path, SMALL)
    path = glyphs.cache_path(tmp_path, SMALL)
    assert path.is_file() and path.parent == tmp_path
    assert first.images.tobytes() == small_images.images.tobytes()

    def no_rendering(params: GlyphParams) -> None:
        raise AssertionError("rendered again although the cache holds the images")

    monkeypatch.setattr(glyphs, "render_glyphs", no_rendering)
    mtime = path.stat().st_mtime_ns
    second = load_or_render(tmp_path, SMALL)
    assert second.images.tobytes() == first.images.tobytes()
    assert second.characters == first.characters and np.array_equal(second.labels, first.labels)
    assert path.stat().st_mtime_ns == mtime


def test_cache_file_is_keyed_by_the_parameters(tmp_path) -> None:
    variants = (
        SMALL,
        GlyphParams(num_classes=12, instances_per_class=5, seed=1),
        GlyphParams(num_classes=12),
    )
    assert len({glyphs.cache_path(tmp_path, params).name for params in variants}) == 3
    same = GlyphParams(num_classes=12, instances_per_class=5)
    assert glyphs.cache_path(tmp_path, SMALL) == glyphs.cache_path(tmp_path, same)


def test_default_cache_dir_follows_harness_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert glyphs.default_cache_dir() == tmp_path
    monkeypatch.delenv("HARNESS_CACHE")
    assert glyphs.default_cache_dir() == glyphs.Path.home() / ".cache" / "gpw-harness" / "glyphs"


def test_failed_write_leaves_no_file(tmp_path, monkeypatch, small_images) -> None:
    written = []

    def disk_full(fd: int) -> None:  # the temporary file holds the data; flushing it to disk fails
        written.append(os.fstat(fd).st_size)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(glyphs, "render_glyphs", lambda params: small_images)
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UserError, match="cannot write the image cache") as caught:
        load_or_render(tmp_path, SMALL)
    assert "\n" not in str(caught.value)
    assert written and written[0] > small_images.images.size
    assert os.listdir(tmp_path) == []


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch, small_images) -> None:
    def interrupted(source: str, target: str) -> None:
        assert os.path.getsize(source) > 0
        raise KeyboardInterrupt

    monkeypatch.setattr(glyphs, "render_glyphs", lambda params: small_images)
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_or_render(tmp_path, SMALL)
    assert os.listdir(tmp_path) == []


def test_unreadable_cache_file_is_rendered_again(tmp_path, small_images) -> None:
    path = glyphs.cache_path(tmp_path, SMALL)
    path.write_bytes(b"not an npz file")
    again = load_or_render(tmp_path, SMALL)
    assert again.images.tobytes() == small_images.images.tobytes()
    assert glyphs._load(path) is not None


# ------------------------------------------------------------------------------------------ splits


def test_splits_follow_the_contract(small_splits) -> None:
    splits = small_splits
    assert splits.eval_mode == "leave_one_out" and splits.default_ks == (1, 2, 4, 8, 16, 32)
    assert splits.query is None and splits.gallery is None
    for dataset in (splits.train, splits.val, splits.test):
        image, label = dataset[0]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
        assert image.shape == (1, 32, 32)
        assert isinstance(label, int) and label == dataset.labels[0]
        assert dataset.labels.dtype == np.int64 and len(dataset) == len(dataset.labels)


def test_splits_are_class_disjoint(small_splits) -> None:
    train, val, test = (
        set(ds.labels.tolist()) for ds in (small_splits.train, small_splits.val, small_splits.test)
    )
    assert len(train) == 4 and len(val) == 2 and len(test) == 6
    assert train | val == set(range(6)) and test == set(range(6, 12))
    assert not train & val
    assert len(small_splits.test) == 6 * 5


def test_no_val_split_keeps_all_training_classes(tmp_path) -> None:
    splits = build_glyph_splits(tmp_path, val_fraction=0.0, val_seed=0, num_classes=12, instances_per_class=5)
    assert splits.val is None
    assert set(splits.train.labels.tolist()) == set(range(6))


def test_images_are_normalised(small_splits) -> None:
    train = small_splits.train
    pixels = torch.stack([(train.images[i].float() - train.mean) / train.std for i in range(len(train))])
    assert abs(float(pixels.mean())) < 1e-3 and abs(float(pixels.std()) - 1.0) < 1e-2
    test_pixels = torch.stack([small_splits.test[i][0] for i in range(len(small_splits.test))])
    assert abs(float(test_pixels.mean())) < 1.0 and 0.5 < float(test_pixels.std()) < 2.0  # few classes here


def test_train_shift_is_light_and_reproducible(small_splits) -> None:
    train, val = small_splits.train, small_splits.val
    assert train.shift == glyphs.DEFAULT_TRAIN_SHIFT and val.shift == 0
    torch.manual_seed(3)
    first = [train[i][0] for i in range(len(train))]
    torch.manual_seed(3)
    second = [train[i][0] for i in range(len(train))]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    plain = [(train.images[i].float() - train.mean) / train.std for i in range(len(train))]
    assert any(not torch.equal(a[0], b) for a, b in zip(first, plain, strict=True))
    assert torch.equal(val[0][0], val[0][0])


def _shifted_one_by_one(dataset: glyphs.GlyphDataset, index: int) -> torch.Tensor:
    """The per-image reference: normalise, pad by repeating the border, crop at a random (dy, dx)."""
    image = (dataset.images[index].float().unsqueeze(0) - dataset.mean) / dataset.std
    size, shift = image.shape[-1], dataset.shift
    dy, dx = torch.randint(0, 2 * shift + 1, (2,)).tolist()
    padded = torch.nn.functional.pad(image.unsqueeze(0), [shift] * 4, mode="replicate")[0]
    return padded[:, dy : dy + size, dx : dx + size]


def test_a_batch_equals_its_images_one_by_one(small_splits) -> None:
    train = small_splits.train
    batch = [5, 0, 3, 3, len(train) - 1, 1]
    torch.manual_seed(11)
    expected = [_shifted_one_by_one(train, i) for i in batch]
    torch.manual_seed(11)
    got = train.__getitems__(batch)
    assert [label for _, label in got] == [int(train.labels[i]) for i in batch]
    assert all(torch.equal(image, want) for (image, _), want in zip(got, expected, strict=True))
    torch.manual_seed(11)
    assert all(torch.equal(train[i][0], want) for i, want in zip(batch, expected, strict=True))


def test_build_splits_dispatches_glyphs(tmp_path, monkeypatch) -> None:
    from harness.data import build_splits

    calls = {}

    def fake(cache_dir, **kwargs):
        calls.update(cache_dir=cache_dir, **kwargs)
        return "splits"

    monkeypatch.setattr(glyphs, "build_glyph_splits", fake)
    assert (
        build_splits("glyphs", None, convention="grey", val_fraction=0.2, val_seed=1, cache_dir=tmp_path)
        == "splits"
    )
    assert calls["cache_dir"] == tmp_path and calls["val_fraction"] == 0.2 and calls["val_seed"] == 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"convention": "imagenet"}, "greyscale"),
        ({"image_size": 224}, "image_size"),
        ({"num_classes": 7}, "even"),
    ],
)
def test_bad_options_are_one_line_user_errors(tmp_path, option, message) -> None:
    with pytest.raises(UserError, match=message) as caught:
        build_glyph_splits(tmp_path, val_fraction=0.0, val_seed=0, **{"num_classes": 12, **option})
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_default_benchmark_counts(tmp_path) -> None:
    splits = build_glyph_splits(tmp_path, val_fraction=0.2, val_seed=0)
    assert len(splits.test) == 200 * 64 and len(set(splits.test.labels.tolist())) == 200
    assert len(set(splits.train.labels.tolist())) == 160 and len(set(splits.val.labels.tolist())) == 40
    assert len(splits.train) + len(splits.val) == 200 * 64


def test_unknown_glyph_option_is_one_line_with_close_match(tmp_path) -> None:
    from harness.data import build_splits
    from harness.errors import UserError

    with pytest.raises(UserError, match=r"unknown data option 'num_clases' .* did you mean 'num_classes'\?"):
        build_splits(
            "glyphs",
            None,
            image_size=32,
            convention="grey",
            val_fraction=0.2,
            cache_dir=tmp_path,
            num_clases=40,
        )


def test_build_splits_defaults_fit_each_benchmark(tmp_path) -> None:
    from harness.data import build_splits

    splits = build_splits(
        "glyphs",
        None,
        val_fraction=0.5,
        val_seed=0,
        cache_dir=tmp_path,
        num_classes=8,
        instances_per_class=4,
        min_fonts=4,
    )
    image, _ = splits.train[0]
    assert tuple(image.shape) == (1, 32, 32)
