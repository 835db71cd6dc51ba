"""The batch samplers: P classes x M images per batch, endless and reproducible, with a resume at any batch.

Two schemes, chosen by the config field ``data.sampler`` (:data:`SAMPLERS`, :func:`build_batch_sampler`);
all randomness derives from ``seed``, and batch k depends only on (seed, k).

``proportional`` (the default, :class:`MPerClassBatchSampler`): every image once per epoch, classes drawn
in proportion to their image count.

- **Per-class queues.** Class c (n_c images) is read in *passes*: pass r is a random permutation of its
  images, cut into ceil(n_c / M) chunks of M. The last chunk of a pass, if short, is topped up with the
  first images of the same permutation, so a batch holds M distinct images whenever n_c >= M; a class
  with fewer than M images repeats its images (cycling through the permutation) to fill its M slots.
  When a pass is used up the next draw starts pass r+1 with a fresh permutation.
- **Epochs.** One epoch is ``batches_per_epoch`` = ceil(sum_c ceil(n_c / M) / P) batches in which class c
  is drawn d_c = ceil(n_c / M) times, i.e. in proportion to its image count and enough to show each of
  its images once. To fill the last batch exactly, a few classes get one extra draw (fixed by the
  seed); a class holding more than 1/P of all draws is capped at one draw per batch.
- **Batches.** Each epoch's draws are dealt into batches of P *distinct* classes: classes in random
  order each pick their d_c batches among those with the most free places, ties broken at random.

Resume: ``start=k`` computes one epoch's class table and the number of draws each class had before k,
then continues exactly as iterating from 0 and dropping k batches would.

``official`` (:class:`OfficialBatchSampler`): the sampling rule of the MS loss's official code.

- **Chunks.** At the start of each epoch every class is shuffled afresh and cut into floor(n_c / M)
  chunks of M; the leftover n_c mod M images sit this epoch out. A class with n_c < M images is padded
  to one chunk of M: each of its images once plus M - n_c drawn with replacement from them, shuffled.
- **Batches.** Each batch draws P distinct classes uniformly at random among the classes that still have
  a chunk this epoch (not in proportion to their size) and takes each one's next chunk. The epoch ends
  when fewer than P classes have chunks left; their chunks are dropped.
- Resume: epoch lengths vary, so ``start=k`` replays the class draws of the epochs before k (cheap:
  no images are touched).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import overload

import numpy as np

from harness.errors import UserError, did_you_mean

# Tags that keep the random streams of the sampler independent of each other.
_EXTRA_DRAWS, _EPOCH_TABLE, _CLASS_PASS, _OFFICIAL_DRAWS, _OFFICIAL_ORDER = range(5)


@overload
def _ceil_div(a: np.ndarray, b: int) -> np.ndarray: ...
@overload
def _ceil_div(a: int, b: int) -> int: ...
def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -(-a // b)


class ClassBatchSampler:
    """What both samplers share: the argument checks, the members of each class, the resume point.

    ``labels``: the class of each training image (any integers). ``iter(sampler)`` starts at batch
    ``start`` each time it is called. Usable as ``DataLoader(dataset, batch_sampler=sampler)``; it has no
    ``__len__`` (it never ends): count iterations yourself.
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int = 5,
        seed: int = 0,
        start: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(
                f"sampler labels must be a 1-d integer array, got shape {labels.shape} of {labels.dtype}"
            )
        classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        if classes_per_batch < 2 or samples_per_class < 2:
            raise UserError(
                f"batches of {classes_per_batch} classes x {samples_per_class} images: pair losses need at "
                "least 2 classes and 2 images per class; raise classes_per_batch / samples_per_class"
            )
        if len(classes) < classes_per_batch:
            raise UserError(
                f"classes_per_batch is {classes_per_batch} but the training set has only {len(classes)} "
                f"classes; use classes_per_batch <= {len(classes)}"
            )
        if start < 0 or seed < 0:
            raise UserError(f"sampler seed {seed} and start {start}: both must be integers >= 0")
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)
        self.start = int(start)
        order = np.argsort(inverse, kind="stable")
        self._members = np.split(order.astype(np.int64), np.cumsum(sizes)[:-1])
        self._classes = classes
        self._sizes = sizes
        self._prepare()

    def _prepare(self) -> None:
        """Precompute what the scheme needs (called at the end of ``__init__``)."""

    def __iter__(self) -> Iterator[list[int]]:
        raise NotImplementedError


class MPerClassBatchSampler(ClassBatchSampler):
    """The ``proportional`` sampler: every image once per epoch, classes drawn in proportion to their size."""

    def _prepare(self) -> None:
        self._chunks_per_pass = _ceil_div(self._sizes, self.samples_per_class)
        self._draws, self.batches_per_epoch = self._draws_per_epoch()

    def _draws_per_epoch(self) -> tuple[np.ndarray, int]:
        """How often each class is drawn in one epoch, and the number of batches of an epoch."""
        draws = self._chunks_per_pass.copy()
        while True:  # cap at one draw per batch; capping shortens the epoch, so repeat until stable
            batches = int(_ceil_div(int(draws.sum()), self.classes_per_batch))
            capped = np.minimum(draws, batches)
            if np.array_equal(capped, draws):
                break
            draws = capped
        shortfall = batches * self.classes_per_batch - int(draws.sum())
        if shortfall:
            free_places = np.repeat(np.arange(len(draws)), batches - draws)
            rng = np.random.default_rng([self.seed, _EXTRA_DRAWS])
            extra = rng.choice(free_places, size=shortfall, replace=False)
            draws = draws + np.bincount(extra, minlength=len(draws))
        return draws, batches

    def _epoch_table(self, epoch: int) -> np.ndarray:
        """The classes of every batch of ``epoch``: shape (batches_per_epoch, P), distinct within a row."""
        rng = np.random.default_rng([self.seed, _EPOCH_TABLE, epoch])
        p, batches = self.classes_per_batch, self.batches_per_epoch
        table = np.empty((batches, p), dtype=np.int64)
        free = np.full(batches, p)
        for cls in rng.permutation(len(self._draws)):
            draws = int(self._draws[cls])
            priority = free + rng.random(batches)  # most free places first, random among equals
            chosen = np.argpartition(-priority, draws - 1)[:draws]
            table[chosen, p - free[chosen]] = cls
            free[chosen] -= 1
        return table

    def _chunk(self, cls: int, draw: int, passes: dict[int, tuple[int, np.ndarray]]) -> np.ndarray:
        """The M image indices of the ``draw``-th draw of class ``cls`` (``passes`` caches permutations)."""
        number, chunk = divmod(draw, int(self._chunks_per_pass[cls]))
        cached = passes.get(cls)
        if cached is None or cached[0] != number:
            rng = np.random.default_rng([self.seed, _CLASS_PASS, cls, number])
            cached = passes[cls] = (number, rng.permutation(self._members[cls]))
        m = self.samples_per_class
        return cached[1][(chunk * m + np.arange(m)) % self._sizes[cls]]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start, self.batches_per_epoch)
        table = self._epoch_table(epoch)
        drawn = epoch * self._draws + np.bincount(table[:offset].ravel(), minlength=len(self._draws))
        passes: dict[int, tuple[int, np.ndarray]] = {}
        while True:
            for row in table[offset:]:
                yield np.concatenate([self._chunk(cls, drawn[cls], passes) for cls in row.tolist()]).tolist()
                drawn[row] += 1
            epoch, offset = epoch + 1, 0
            table = self._epoch_table(epoch)


class OfficialBatchSampler(ClassBatchSampler):
    """The ``official`` sampler: the MS loss's official sampling rule (see the module docstring)."""

    def _prepare(self) -> None:
        m = self.samples_per_class
        self._chunks_per_epoch = np.maximum(self._sizes // m, 1)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)[:-1]])
        self._grouped = np.concatenate(self._members)  # class 0's images, then class 1's, ...
        self._class_of_grouped = np.repeat(np.arange(len(self._sizes)), self._sizes)
        self._small = np.flatnonzero(self._sizes < m)  # padded to M: every image once, the rest drawn

    def epoch_classes(self, epoch: int) -> np.ndarray:
        """The labels each batch of ``epoch`` draws, in order: shape (batches of that epoch, P)."""
        return self._classes[self._epoch_draws(epoch)]

    def _epoch_draws(self, epoch: int) -> np.ndarray:
        """The class positions of every batch of ``epoch``: shape (batches, P), distinct within a row."""
        rng = np.random.default_rng([self.seed, _OFFICIAL_DRAWS, epoch])
        left = self._chunks_per_epoch.copy()
        available = np.arange(len(left))
        rows = []
        while len(available) >= self.classes_per_batch:
            row = rng.choice(available, size=self.classes_per_batch, replace=False)
            rows.append(row)
            left[row] -= 1
            if (left[row] == 0).any():
                available = available[left[available] > 0]
        return np.array(rows, dtype=np.int64).reshape(-1, self.classes_per_batch)

    def _epoch_chunks(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's image order: every class shuffled in place (grouped by class) and the padded small
        classes.

        Returns ``(shuffled, padded)``: class c's chunk k is ``shuffled[offset_c + k*M : offset_c + (k+1)*M]``
        when it has at least M images; row i of ``padded`` is the one chunk of the i-th small class.
        """
        rng = np.random.default_rng([self.seed, _OFFICIAL_ORDER, epoch])
        within = np.lexsort((rng.random(len(self._grouped)), self._class_of_grouped))
        shuffled = self._grouped[within]
        return shuffled, self._padded_chunks(rng)

    def _padded_chunks(self, rng: np.random.Generator) -> np.ndarray:
        """One chunk of M per small class: its n images once, M - n more drawn with replacement, shuffled."""
        slots = np.arange(self.samples_per_class)[None, :]
        sizes = self._sizes[self._small][:, None]
        drawn = (rng.random((len(self._small), self.samples_per_class)) * sizes).astype(np.int64)
        position = np.where(slots < sizes, slots, drawn)  # slot j < n: image j; the rest: a random image
        order = np.argsort(rng.random(position.shape), axis=1)
        return self._grouped[
            self._offsets[self._small][:, None] + np.take_along_axis(position, order, axis=1)
        ]

    def _chunk(self, cls: int, number: int, shuffled: np.ndarray, padded: np.ndarray) -> np.ndarray:
        m = self.samples_per_class
        if self._sizes[cls] < m:
            return padded[np.searchsorted(self._small, cls)]
        first = self._offsets[cls] + number * m
        return shuffled[first : first + m]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = 0, self.start
        draws = self._epoch_draws(epoch)
        while offset >= len(draws):  # replay the class draws of the epochs before ``start``
            epoch, offset = epoch + 1, offset - len(draws)
            draws = self._epoch_draws(epoch)
        while True:
            shuffled, padded = self._epoch_chunks(epoch)
            taken = np.bincount(draws[:offset].ravel(), minlength=len(self._sizes))
            for row in draws[offset:].tolist():
                yield np.concatenate([self._chunk(cls, taken[cls], shuffled, padded) for cls in row]).tolist()
                taken[row] += 1
            epoch, offset = epoch + 1, 0
            draws = self._epoch_draws(epoch)


SAMPLERS: dict[str, type[ClassBatchSampler]] = {
    "proportional": MPerClassBatchSampler,
    "official": OfficialBatchSampler,
}


def build_batch_sampler(
    name: str,
    labels: np.ndarray,
    classes_per_batch: int,
    samples_per_class: int = 5,
    seed: int = 0,
    start: int = 0,
) -> ClassBatchSampler:
    """The sampler called ``name`` (config field ``data.sampler``, one of :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r} (config field data.sampler){did_you_mean(name, SAMPLERS)}")
    return SAMPLERS[name](labels, classes_per_batch, samples_per_class, seed=seed, start=start)
