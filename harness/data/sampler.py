"""P classes x M images per batch, endless and reproducible, with a cheap resume at any batch.

The scheme (all randomness derives from ``seed``):

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

Batch k depends only on (seed, k): ``start=k`` computes one epoch's class table and the number of draws
each class had before k, then continues exactly as iterating from 0 and dropping k batches would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from harness.errors import UserError

# Tags that keep the random streams of the sampler independent of each other.
_EXTRA_DRAWS, _EPOCH_TABLE, _CLASS_PASS = 0, 1, 2


def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -(-a // b)


class MPerClassBatchSampler:
    """Endless iterator of batches (lists of ``classes_per_batch * samples_per_class`` int indices).

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
        self._sizes = sizes
        self._chunks_per_pass = _ceil_div(sizes, self.samples_per_class)
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
