"""The batch samplers (proportional, official): P x M structure, reproducibility, coverage, resume, errors."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data import SAMPLERS, MPerClassBatchSampler, OfficialBatchSampler, build_batch_sampler
from harness.data.sampler import ClassBatchSampler
from harness.errors import UserError


def take(sampler: ClassBatchSampler, n: int) -> list[list[int]]:
    return list(islice(iter(sampler), n))


def labels_with_sizes(sizes: list[int], first_label: int = 0) -> np.ndarray:
    """Labels of a shuffled training set whose class i has sizes[i] images (labels need not be 0..C-1)."""
    labels = np.repeat(np.arange(first_label, first_label + len(sizes)), sizes)
    return np.random.default_rng(123).permutation(labels)


def assert_p_by_m(batch: list[int], labels: np.ndarray, p: int, m: int) -> None:
    assert len(batch) == p * m
    assert all(isinstance(index, int) for index in batch)
    per_class = Counter(labels[batch].tolist())
    assert len(per_class) == p, "a batch must hold P distinct classes"
    assert set(per_class.values()) == {m}, "each class must contribute exactly M images"
    for start in range(0, p * m, m):  # the M images of one class are contiguous
        assert len(set(labels[batch[start : start + m]].tolist())) == 1


def test_batches_are_p_classes_by_m_images() -> None:
    labels = labels_with_sizes([7, 12, 5, 9, 30, 6, 11, 8], first_label=100)
    sampler = MPerClassBatchSampler(labels, classes_per_batch=4, samples_per_class=3, seed=0)
    for batch in take(sampler, 3 * sampler.batches_per_epoch):
        assert_p_by_m(batch, labels, 4, 3)
        for start in range(0, 12, 3):  # classes with >= M images never repeat an image within a batch
            assert len(set(batch[start : start + 3])) == 3


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    labels = labels_with_sizes([10] * 12)
    first = take(MPerClassBatchSampler(labels, 4, 5, seed=7), 20)
    assert first == take(MPerClassBatchSampler(labels, 4, 5, seed=7), 20)
    assert first != take(MPerClassBatchSampler(labels, 4, 5, seed=8), 20)
    sampler = MPerClassBatchSampler(labels, 4, 5, seed=7)
    assert take(sampler, 20) == take(sampler, 20), "each iter() restarts at `start`"


def test_one_epoch_shows_every_image_and_draws_classes_by_size() -> None:
    sizes = [3, 5, 6, 10, 11, 25, 4, 9, 14, 2]
    labels = labels_with_sizes(sizes)
    m = 5
    sampler = MPerClassBatchSampler(labels, classes_per_batch=3, samples_per_class=m, seed=1)
    expected_draws = [-(-n // m) for n in sizes]
    assert sampler.batches_per_epoch == -(-sum(expected_draws) // 3)
    epoch = take(sampler, sampler.batches_per_epoch)
    seen = Counter(index for batch in epoch for index in batch)
    assert set(seen) == set(range(len(labels))), "every training image appears in the first epoch"
    draws = Counter(labels[batch[start]] for batch in epoch for start in range(0, len(batch), m))
    for cls, n_draws in enumerate(expected_draws):  # proportional to size; at most one extra draw to fill
        assert n_draws <= draws[cls] <= n_draws + 1


def test_usage_is_even_over_many_epochs() -> None:
    labels = labels_with_sizes([8, 13, 21, 5, 10, 17])
    sampler = MPerClassBatchSampler(labels, classes_per_batch=3, samples_per_class=4, seed=2)
    epochs = 20
    seen = Counter(i for batch in take(sampler, epochs * sampler.batches_per_epoch) for i in batch)
    counts = np.array([seen[i] for i in range(len(labels))])
    assert counts.min() >= epochs - 1
    assert counts.max() <= 2 * epochs


@pytest.mark.parametrize(("epochs", "offset"), [(0, 0), (0, 1), (1, -1), (1, 0), (1, 1), (3, 2)])
def test_start_k_equals_dropping_k_batches(epochs: int, offset: int) -> None:
    labels = labels_with_sizes([4, 9, 6, 13, 3, 7, 5, 11])
    reference = MPerClassBatchSampler(labels, 3, 4, seed=5)
    start = epochs * reference.batches_per_epoch + offset  # around epoch boundaries
    expected = list(islice(iter(reference), start, start + 12))
    assert take(MPerClassBatchSampler(labels, 3, 4, seed=5, start=start), 12) == expected


def test_classes_smaller_than_m_repeat_their_images() -> None:
    labels = labels_with_sizes([1, 3, 6, 8, 2])
    sampler = MPerClassBatchSampler(labels, classes_per_batch=2, samples_per_class=5, seed=0)
    for batch in take(sampler, 2 * sampler.batches_per_epoch):
        assert_p_by_m(batch, labels, 2, 5)
        for start in range(0, 10, 5):
            group = batch[start : start + 5]
            size = int((labels == labels[group[0]]).sum())
            assert len(set(group)) == min(size, 5), "cycle through all images of a small class"


def test_a_dominant_class_is_capped_at_one_draw_per_batch() -> None:
    labels = labels_with_sizes([200, 3, 4])
    sampler = MPerClassBatchSampler(labels, classes_per_batch=3, samples_per_class=2, seed=0)
    for batch in take(sampler, 30):
        assert_p_by_m(batch, labels, 3, 2)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=2, max_size=25),
    p=st.integers(2, 8),
    m=st.integers(2, 6),
    seed=st.integers(0, 2**31),
)
def test_structure_holds_for_any_class_sizes(sizes: list[int], p: int, m: int, seed: int) -> None:
    p = min(p, len(sizes))
    labels = labels_with_sizes(sizes)
    sampler = MPerClassBatchSampler(labels, p, m, seed=seed)
    for batch in take(sampler, 2 * sampler.batches_per_epoch + 1):
        assert_p_by_m(batch, labels, p, m)
    official = OfficialBatchSampler(labels, p, m, seed=seed)
    epochs = [official.epoch_classes(epoch) for epoch in range(3)]
    batches = take(official, sum(map(len, epochs)))
    assert [labels[batch[::m]].tolist() for batch in batches] == np.concatenate(epochs).tolist()
    for batch in batches:
        assert_p_by_m(batch, labels, p, m)


def test_works_as_a_dataloader_batch_sampler() -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    labels = labels_with_sizes([4, 4, 4])
    dataset = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    loader = DataLoader(dataset, batch_sampler=MPerClassBatchSampler(labels, 2, 2, seed=0))
    indices, batch_labels = next(iter(loader))
    assert indices.shape == (4,)
    assert torch.equal(batch_labels, torch.as_tensor(labels[indices.numpy()]))


@pytest.mark.parametrize(
    ("labels", "p", "m", "start", "message"),
    [
        (np.array([0, 0, 1, 1]), 3, 2, 0, "only 2 classes"),
        (np.array([0, 0, 0]), 2, 2, 0, "only 1 classes"),
        (np.array([0, 0, 1, 1]), 1, 2, 0, "at least 2 classes"),
        (np.array([0, 0, 1, 1]), 2, 1, 0, "2 images per class"),
        (np.array([[0, 1]]), 2, 2, 0, "1-d integer array"),
        (np.array([0.5, 1.5]), 2, 2, 0, "1-d integer array"),
        (np.array([0, 0, 1, 1]), 2, 2, -1, "start -1: both must be integers >= 0"),
    ],
)
@pytest.mark.parametrize("name", SAMPLERS)
def test_bad_arguments_raise_one_line_user_errors(
    labels: np.ndarray, p: int, m: int, start: int, message: str, name: str
) -> None:
    with pytest.raises(UserError, match=message) as err:
        build_batch_sampler(name, labels, p, m, seed=0, start=start)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", SAMPLERS)
def test_negative_seed_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="seed -3"):
        build_batch_sampler(name, np.array([0, 0, 1, 1]), 2, 2, seed=-3)


def test_build_batch_sampler_by_name() -> None:
    labels = labels_with_sizes([6, 6, 6])
    assert type(build_batch_sampler("proportional", labels, 2, 3)) is MPerClassBatchSampler
    assert type(build_batch_sampler("official", labels, 2, 3)) is OfficialBatchSampler
    with pytest.raises(
        UserError, match=r"unknown sampler 'oficial' \(config field data.sampler\); did you mean"
    ):
        build_batch_sampler("oficial", labels, 2, 3)


# ------------------------------------------------------------------------------ the official sampler

M = 5
# Like SOP: most classes hold 2-4 images, some 5-12, a few are large.
SOP_LIKE = [2, 3, 4] * 40 + [5, 6, 7, 9, 12] * 6 + [40, 57, 63]


def class_sizes(labels: np.ndarray) -> dict[int, int]:
    return dict(Counter(labels.tolist()))


def epochs_of(sampler: OfficialBatchSampler, count: int) -> list[list[list[int]]]:
    """The batches of the first ``count`` epochs, grouped by epoch."""
    lengths = [len(sampler.epoch_classes(epoch)) for epoch in range(count)]
    batches = take(sampler, sum(lengths))
    ends = np.cumsum(lengths)
    return [batches[end - length : end] for end, length in zip(ends, lengths, strict=True)]


def test_official_classes_are_drawn_uniformly_not_by_size() -> None:
    labels = labels_with_sizes(SOP_LIKE)
    sizes = class_sizes(labels)
    p, runs = 10, 300
    classes = len(SOP_LIKE)

    def first_batch_rates(kind: str) -> tuple[float, float]:
        """How often a large (>= 40 images) and a small (< M) class is in the first batch,
        per class and run."""
        counts = Counter()
        for seed in range(runs):
            first = next(iter(build_batch_sampler(kind, labels, p, M, seed=seed)))
            counts.update(set(labels[first].tolist()))
        large = [c for c, n in sizes.items() if n >= 40]
        small = [c for c, n in sizes.items() if n < M]
        return (
            sum(counts[c] for c in large) / len(large) / runs,
            sum(counts[c] for c in small) / len(small) / runs,
        )

    large, small = first_batch_rates("official")
    uniform = p / classes
    assert abs(small - uniform) < 0.25 * uniform and abs(large - uniform) < 0.9 * uniform
    assert large < 3 * uniform, "the official rule does not favour large classes"
    large_proportional, _ = first_batch_rates("proportional")
    assert large_proportional > 5 * uniform, "the proportional sampler does (the test tells them apart)"


def test_official_epoch_uses_whole_chunks_drops_leftovers_and_pads_small_classes() -> None:
    labels = labels_with_sizes(SOP_LIKE)
    sizes = class_sizes(labels)
    p = 8
    sampler = OfficialBatchSampler(labels, p, M, seed=3)
    padded_images: dict[int, set[int]] = {}
    epoch_sets = []
    for batches in epochs_of(sampler, 4):
        shown: dict[int, list[int]] = {}
        for batch in batches:
            assert_p_by_m(batch, labels, p, M)
            for start in range(0, len(batch), M):
                chunk = batch[start : start + M]
                shown.setdefault(int(labels[chunk[0]]), []).extend(chunk)
        classes_with_chunks_left = 0
        for cls, images in shown.items():
            chunks = max(sizes[cls] // M, 1)
            assert len(images) <= chunks * M
            classes_with_chunks_left += len(images) < chunks * M
            if sizes[cls] >= M:  # whole chunks of distinct images; n mod M leftovers sit the epoch out
                assert len(set(images)) == len(images)
            else:  # one chunk of M: each of its fewer than M images, then repeats
                assert len(images) == M and len(set(images)) == sizes[cls]
                padded_images.setdefault(cls, set()).update(images)
        classes_with_chunks_left += len(sizes) - len(shown)
        assert classes_with_chunks_left < p, "an epoch ends only when fewer than P classes have chunks left"
        epoch_sets.append({cls: frozenset(images) for cls, images in shown.items() if sizes[cls] == 7})
    for cls, images in padded_images.items():
        assert images == set(np.flatnonzero(labels == cls).tolist())
    dropped = {cls: {e[cls] for e in epoch_sets if cls in e} for cls in epoch_sets[0]}
    assert any(len(variants) > 1 for variants in dropped.values()), "the dropped leftovers change per epoch"


def test_official_is_seed_deterministic_and_within_class_order_follows_the_seed() -> None:
    labels = labels_with_sizes([12] * 6 + [3] * 6)
    runs = {seed: take(OfficialBatchSampler(labels, 3, M, seed=seed), 40) for seed in range(6)}
    assert runs[0] == take(OfficialBatchSampler(labels, 3, M, seed=0), 40)
    assert runs[0] != runs[1]

    def first_chunk_of_class_0(batches: list[list[int]]) -> tuple[int, ...]:
        for batch in batches:
            for start in range(0, len(batch), M):
                if labels[batch[start]] == 0:
                    return tuple(batch[start : start + M])
        raise AssertionError("class 0 never drawn")

    assert len({first_chunk_of_class_0(batches) for batches in runs.values()}) > 3


@pytest.mark.parametrize("start", [0, 1, 7, 23, 24, 25, 61])
def test_official_resume_at_any_batch_matches_skipping(start: int) -> None:
    labels = labels_with_sizes(SOP_LIKE[::3])
    reference = take(OfficialBatchSampler(labels, 4, M, seed=5), start + 15)
    assert take(OfficialBatchSampler(labels, 4, M, seed=5, start=start), 15) == reference[start:]


def test_official_pads_a_small_class_with_all_its_images_plus_draws_with_replacement() -> None:
    """A class of 2 images with M = 5: both images appear, plus 3 drawn with replacement from the class."""
    labels = labels_with_sizes([2, 8, 8, 8])
    pair = set(np.flatnonzero(labels == 0).tolist())
    chunks = []
    for seed in range(40):
        for batch in take(OfficialBatchSampler(labels, 2, M, seed=seed), 6):
            chunks.extend(tuple(batch[s : s + M]) for s in range(0, len(batch), M) if labels[batch[s]] == 0)
    assert len(chunks) > 20
    repeats = Counter()
    for chunk in chunks:
        assert set(chunk) == pair, "each of the class's images is in its chunk"
        repeats[max(Counter(chunk).values())] += 1
    # Each image once plus 3 draws with replacement: the chunk splits 2+3 (probability 3/4) or 1+4 (1/4),
    # never 0+5 (drawing all 5 with replacement would, and could leave an image out).
    assert set(repeats) == {3, 4}, repeats
    firsts = {chunk[0] for chunk in chunks}
    assert firsts == pair, "the chunk is shuffled: either image may come first"
