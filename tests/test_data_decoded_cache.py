"""The pre-decoded image cache: round trip, the same crops as the JPEG path, stale keys, atomic builds,
damaged caches and the ``cache`` command."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_trees import make_cub
from PIL import Image
from torchvision.transforms import v2

from harness.config.schema import DataConfig
from harness.data import CachedImageDataset, build_splits
from harness.data.__main__ import main as data_main
from harness.data.decoded_cache import ResizeRule, crop_at_source_scale
from harness.data.images import ImageDataset
from harness.errors import DataError, UserError

OFFICIAL = {"image_size": 16, "crop_scale": (0.16, 1.0), "resize_size": 20, "train_resize": True}
PAPER = {"image_size": 16}  # RandomResizedCrop of the full-size image; the cache holds 18 px (16 * 256 / 224)


def splits(root: Path, cached: bool, **options: object):  # type: ignore[no-untyped-def]
    extra = {"decoded_cache": True, "cache_dir": root / "cache"} if cached else {}
    return build_splits("cub", root, strict_counts=False, **extra, **options)  # type: ignore[arg-type]


def seeded(dataset, indices: list[int], seed: int) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return [dataset[i][0] for i in indices]


def write_smooth_images(folder: Path, size: tuple[int, int] = (96, 72)) -> None:
    """Replace every fixture JPEG by a smooth photo-like one (a coarse colour field upsampled bicubically)."""
    rng = np.random.default_rng(1)
    for path in sorted(folder.rglob("*.jpg")):
        coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(path, "JPEG", quality=95)


def test_round_trip_holds_the_resized_decoded_images(tmp_path: Path) -> None:
    make_cub(tmp_path)
    plain, cached = splits(tmp_path, False, **OFFICIAL), splits(tmp_path, True, **OFFICIAL)
    assert isinstance(cached.train, CachedImageDataset) and isinstance(cached.test, CachedImageDataset)
    assert isinstance(plain.train, ImageDataset)
    resize = ResizeRule(20).resize()
    for jpeg, from_cache in ((plain.train, cached.train), (plain.test, cached.test)):
        assert jpeg.files == from_cache.files and np.array_equal(jpeg.labels, from_cache.labels)
        for i in range(len(jpeg)):
            source = jpeg.load(i)
            row = int(from_cache.rows[i])
            assert np.array_equal(from_cache.cache.image(row), np.asarray(resize(source)))
            assert min(from_cache.cache.image(row).shape[:2]) == 20
            assert from_cache.cache.source_size(row) == (source.height, source.width)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and names[0].endswith(".index.npy") and names[1].endswith(".pixels.npy")


def test_official_transform_gives_the_same_tensors_from_the_same_seed(tmp_path: Path) -> None:
    """Resize once + the same RandomResizedCrop and flip objects: bit-identical to the JPEG path (on
    images larger than the cache, so the crop must be drawn on the resized image, not the source)."""
    make_cub(tmp_path)
    write_smooth_images(tmp_path / "CUB_200_2011" / "images")
    plain, cached = splits(tmp_path, False, **OFFICIAL), splits(tmp_path, True, **OFFICIAL)
    indices = list(range(len(plain.train)))
    for seed in (0, 1, 2):
        jpeg = seeded(plain.train, indices, seed)
        assert all(torch.equal(a, b) for a, b in zip(jpeg, seeded(cached.train, indices, seed), strict=True))
        torch.manual_seed(
            seed
        )  # a batch (DataLoader's __getitems__) draws the same numbers in the same order
        batch = [t for t, _ in cached.train.__getitems__(indices)]
        assert all(torch.equal(a, b) for a, b in zip(jpeg, batch, strict=True))
    other = seeded(plain.train, indices, 3)
    assert not all(torch.equal(a, b) for a, b in zip(seeded(cached.train, indices, 0), other, strict=True))
    for i in range(len(plain.test)):  # evaluation: Resize + CenterCrop, no randomness
        assert torch.equal(plain.test[i][0], cached.test[i][0])


def test_paper_transform_crops_the_same_box_and_states_the_pixel_difference(tmp_path: Path) -> None:
    """The crop is drawn on the source size (same numbers, same box) and cut from the smaller cached copy:
    on smooth images the mean pixel difference stays under 3 of 255, far below that of another crop."""
    make_cub(tmp_path)
    write_smooth_images(tmp_path / "CUB_200_2011" / "images")
    plain, cached = splits(tmp_path, False, **PAPER), splits(tmp_path, True, **PAPER)
    crop = cached.train.source_crop
    assert isinstance(crop, v2.RandomResizedCrop)
    source = plain.train.load(0)
    torch.manual_seed(5)
    on_jpeg = crop.make_params([source])
    torch.manual_seed(5)
    on_size = crop.make_params([torch.empty((1, source.height, source.width), device="meta")])
    assert on_jpeg == on_size
    indices = list(range(len(plain.train)))
    same, different = [], []
    for seed in range(4):
        jpeg = seeded(plain.train, indices, seed)
        from_cache = seeded(cached.train, indices, seed)
        shifted = seeded(plain.train, indices, seed + 100)
        same += [float((a - b).abs().mean()) for a, b in zip(jpeg, from_cache, strict=True)]
        different += [float((a - b).abs().mean()) for a, b in zip(jpeg, shifted, strict=True)]
        torch.manual_seed(seed)
        batch = [t for t, _ in cached.train.__getitems__(indices)]
        assert all(torch.equal(a, b) for a, b in zip(from_cache, batch, strict=True))
    assert max(same) < 3.0  # BN-Inception input: 0-255 units
    assert np.mean(different) > 4 * np.mean(same)


def test_crop_at_source_scale_is_the_plain_crop_on_a_full_size_image() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    crop = v2.RandomResizedCrop(12, antialias=True)
    torch.manual_seed(0)
    expected = np.asarray(crop(image))
    torch.manual_seed(0)
    assert np.array_equal(np.asarray(crop_at_source_scale(crop, image, (30, 40))), expected)


def test_a_changed_image_gives_a_new_key_and_a_rebuilt_cache(tmp_path: Path) -> None:
    make_cub(tmp_path)
    first = splits(tmp_path, True, **OFFICIAL).train
    path = first.root / first.files[0]
    Image.fromarray(np.full((30, 50, 3), 7, dtype=np.uint8)).save(path, "JPEG")
    os.utime(path, ns=(1, 1))
    second = splits(tmp_path, True, **OFFICIAL).train
    assert second.cache.paths != first.cache.paths
    image = second.cache.image(int(second.rows[0]))
    assert image.shape == (20, 33, 3) and second.cache.source_size(int(second.rows[0])) == (30, 50)
    assert len(list((tmp_path / "cache").glob("*.index.npy"))) == 2
    other_size = splits(tmp_path, True, **{**OFFICIAL, "resize_size": 24}).train
    assert other_size.cache.paths not in (first.cache.paths, second.cache.paths)


def test_a_build_that_fails_halfway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cub(tmp_path)
    calls = []
    load = ImageDataset.load

    def failing(self: ImageDataset, index: int) -> Image.Image:
        calls.append(index)
        if len(calls) == 5:
            raise DataError("simulated failure")
        return load(self, index)

    monkeypatch.setattr(ImageDataset, "load", failing)
    with pytest.raises(DataError, match="simulated failure"):
        splits(tmp_path, True, **OFFICIAL)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(ImageDataset, "load", load)
    assert isinstance(splits(tmp_path, True, **OFFICIAL).train, CachedImageDataset)


@pytest.mark.parametrize("damage", ["truncated pixels", "foreign index", "missing pixels"])
def test_a_damaged_cache_is_one_line_naming_the_file(tmp_path: Path, damage: str) -> None:
    make_cub(tmp_path)
    paths = splits(tmp_path, True, **OFFICIAL).train.cache.paths
    if damage == "truncated pixels":
        with open(paths.pixels, "r+b") as handle:
            handle.truncate(paths.pixels.stat().st_size - 10)
        named = paths.pixels
    elif damage == "foreign index":
        np.save(paths.index, np.zeros((3, 2), dtype=np.float32))
        named = paths.index
    else:
        paths.pixels.unlink()
        named = paths.pixels
    with pytest.raises(DataError) as err:
        splits(tmp_path, True, **OFFICIAL)
    message = str(err.value)
    assert "\n" not in message and str(named) in message and "delete it" in message


def test_cache_command_builds_once_and_states_the_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_cub(tmp_path)
    args = ["cache", "cub", "--root", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    args += ["--image-size", "16", "--resize-size", "20", "--no-strict-counts"]
    assert data_main(args) == 0
    built = capsys.readouterr().out
    size = sum(p.stat().st_size for p in (tmp_path / "cache").iterdir())
    assert "decoded cache of 21 images" in built and f"({size:,} bytes)" in built and "built in" in built
    assert data_main(args) == 0
    assert "already built" in capsys.readouterr().out
    # the command's cache is the one a run with the same settings (and a validation split) reads
    run = build_splits(
        "cub",
        tmp_path,
        strict_counts=False,
        decoded_cache=True,
        cache_dir=tmp_path / "cache",
        val_fraction=0.5,
        **{k: v for k, v in OFFICIAL.items() if k != "crop_scale"},
    )
    assert run.train.cache.paths.pixels.name in built  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="official count"):
        data_main(args[:-1])


def test_config_key_is_off_by_default_and_left_out_of_the_dump() -> None:
    assert "decoded_cache" not in DataConfig().model_dump()
    assert DataConfig(decoded_cache=True).model_dump()["decoded_cache"] is True


def test_loader_batches_come_from_the_cache(tmp_path: Path) -> None:
    make_cub(tmp_path)
    train = splits(tmp_path, True, **OFFICIAL).train
    loader = torch.utils.data.DataLoader(train, batch_sampler=[[0, 1, 2, 3], [4, 5, 6, 7]], num_workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == train.labels[:4].tolist()


def test_a_pickled_dataset_carries_no_pixels_and_maps_the_files_again(tmp_path: Path) -> None:
    """What a spawned DataLoader worker receives: the paths, not the memory map's content."""
    make_cub(tmp_path)
    write_smooth_images(tmp_path / "CUB_200_2011" / "images")
    train = splits(tmp_path, True, **OFFICIAL).train
    pickled = pickle.dumps(train)
    assert len(pickled) < train.cache.paths.pixels.stat().st_size
    copy = pickle.loads(pickled)
    assert copy.cache._pixels is None
    assert all(
        torch.equal(a, b) for a, b in zip(seeded(train, [0, 5], 0), seeded(copy, [0, 5], 0), strict=True)
    )


def fast_splits(root: Path, **options: object):  # type: ignore[no-untyped-def]
    return build_splits(  # type: ignore[arg-type]
        "cub", root, strict_counts=False, decoded_cache="fast", cache_dir=root / "cache", **options
    )


def test_fast_crops_of_the_official_transform_are_within_one_level(tmp_path: Path) -> None:
    """``decoded_cache: fast``: the same draws, the box on whole cached pixels, torch's uint8 kernel: each
    pixel within one level (of 255) of the JPEG path; batches equal single images."""
    make_cub(tmp_path)
    write_smooth_images(tmp_path / "CUB_200_2011" / "images")
    plain, fast = splits(tmp_path, False, **OFFICIAL), fast_splits(tmp_path, **OFFICIAL)
    assert fast.train.torch_crop is not None and not fast.train.torch_crop.at_source_scale
    indices = list(range(len(plain.train)))
    for seed in (0, 1):
        jpeg, from_cache = seeded(plain.train, indices, seed), seeded(fast.train, indices, seed)
        assert max(float((a - b).abs().max()) for a, b in zip(jpeg, from_cache, strict=True)) <= 1.0 + 1e-4
        torch.manual_seed(seed)
        batch = [t for t, _ in fast.train.__getitems__(indices)]
        assert all(torch.equal(a, b) for a, b in zip(from_cache, batch, strict=True))
    for i in range(len(plain.test)):  # evaluation has no crop to resample: unchanged
        assert torch.equal(plain.test[i][0], fast.test[i][0])


def test_fast_crops_of_the_paper_transform_at_real_size(tmp_path: Path) -> None:
    """Smooth 500 x 375 images cached at 256 px, 224 px crops of the full-size image: the fast crops'
    mean difference from the JPEG path stays under 1.5 of 255 (the PIL box under 0.6), against over 20
    for crops from another seed."""
    make_cub(tmp_path)
    write_smooth_images(tmp_path / "CUB_200_2011" / "images", (500, 375))
    options = {"image_size": 224}
    plain, pil = splits(tmp_path, False, **options).train, splits(tmp_path, True, **options).train
    fast = fast_splits(tmp_path, **options).train
    assert fast.torch_crop is not None and fast.torch_crop.at_source_scale
    indices = list(range(0, len(plain), 2))
    jpeg = seeded(plain, indices, 0)

    def mean_differences(other: list[torch.Tensor]) -> list[float]:
        return [float((a - b).abs().mean()) for a, b in zip(jpeg, other, strict=True)]

    assert max(mean_differences(seeded(pil, indices, 0))) < 0.6
    assert max(mean_differences(seeded(fast, indices, 0))) < 1.5
    assert min(mean_differences(seeded(plain, indices, 100))) > 20.0


def test_fast_crops_on_an_uncached_size_are_torchvisions_tensor_crops() -> None:
    """An image cached at its own size: the fast crop is torchvision's RandomResizedCrop + flip on the
    uint8 tensor (the same kernel on the same whole-pixel box), within one level."""
    from harness.data.decoded_cache import TorchCrop

    steps = [v2.RandomResizedCrop(12, antialias=True), v2.RandomHorizontalFlip()]
    crop = TorchCrop.of(steps, at_source_scale=True)
    assert crop is not None
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    for seed in range(8):
        torch.manual_seed(seed)
        expected = v2.Compose(steps)(tensor)
        torch.manual_seed(seed)
        got = crop(pixels, (30, 40))[0]
        assert got.shape == expected.shape == (3, 12, 12)
        assert int((got.int() - expected.int()).abs().max()) <= 1


def test_fast_crops_take_only_a_crop_and_flip_with_a_torch_filter() -> None:
    from harness.data.decoded_cache import TorchCrop

    crop = v2.RandomResizedCrop(12, antialias=True)
    assert TorchCrop.of([crop], at_source_scale=False) is not None
    assert TorchCrop.of([crop, v2.Grayscale()], at_source_scale=False) is None  # greyscale: PIL path
    lanczos = v2.RandomResizedCrop(12, interpolation=v2.InterpolationMode.LANCZOS, antialias=True)
    assert TorchCrop.of([lanczos], at_source_scale=False) is None
    assert TorchCrop.of([v2.CenterCrop(12)], at_source_scale=False) is None


def test_fast_cache_setting_is_its_own_cell_setting() -> None:
    assert DataConfig(decoded_cache="fast").model_dump()["decoded_cache"] == "fast"
    with pytest.raises(ValueError):
        DataConfig(decoded_cache="quick")


def test_trainer_batches_normalised_on_the_device_equal_the_workers_batches(tmp_path: Path) -> None:
    """What the trainer does on a GPU (here the CPU stands in): uint8 batches from the fast cache,
    converted and normalised where the model runs, give the float batches the workers would make."""
    from itertools import islice

    from harness.config import CellConfig
    from harness.train import training_batches

    make_cub(tmp_path)
    write_smooth_images(tmp_path / "CUB_200_2011" / "images")
    built = fast_splits(tmp_path, **PAPER)
    cell = CellConfig.model_validate(
        {
            "experiment": "fast-cache",
            "dataset": "cub",
            "embedding_size": 8,
            "seed": 0,
            "data": {"classes_per_batch": 2, "samples_per_class": 2, "workers": 0},
            "loss": {"name": "ms"},
        }
    )
    torch.manual_seed(0)
    in_workers = list(islice(training_batches(built, cell, 0, None), 3))
    torch.manual_seed(0)
    on_device = list(islice(training_batches(built, cell, 0, None, normalise_on=torch.device("cpu")), 3))
    assert not built.train.uint8_batches  # the trainer works on a copy
    for (a, labels_a), (b, labels_b) in zip(in_workers, on_device, strict=True):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b) and torch.equal(labels_a, labels_b)
