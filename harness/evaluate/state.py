"""Per-query ranking state, updated block by block: counts ahead of the first correct reference, top R-1."""

from __future__ import annotations

import math

import numpy as np
import torch

# A block's entries above the thresholds are listed one by one when at most 1/_SPARSE_RATIO of the
# block; otherwise the rows of the tracked queries concerned go through a top-k.
_SPARSE_RATIO = 32
# A block's rows (or columns) with an entry at or above their query's threshold are copied out and
# processed alone when at most 1/_HOT_RATIO of them.
_HOT_RATIO = 2


def _stable_order(values: torch.Tensor) -> torch.Tensor:
    """Stable argsort; numpy's on the CPU (torch's threaded sort is slow on small CPU tensors)."""
    if values.device.type != "cpu":
        return torch.argsort(values, stable=True)
    return torch.from_numpy(np.argsort(values.numpy(), kind="stable"))


def _indices(rows: slice | torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """The query index of positions ``local`` within ``rows``."""
    return local + rows.start if isinstance(rows, slice) else rows[local]


class Workspace:
    """Buffers reused by every block (fresh large allocations cost page faults on each use)."""

    def __init__(self, rows: int, cols: int, dims: int, dtype: torch.dtype, device: torch.device) -> None:
        self.queries = torch.empty(rows * dims, dtype=dtype, device=device)
        self.product = torch.empty(rows * cols, dtype=dtype, device=device)
        self.flags = torch.empty(rows * cols, dtype=dtype, device=device)
        self.picked = torch.empty(rows * cols, dtype=dtype, device=device)
        self.hot = torch.empty(rows * cols, dtype=dtype, device=device)

    @staticmethod
    def view(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        return buffer[: rows * cols].view(rows, cols)


class QueryState:
    """Per-query counters updated block by block; see the module docstring for the algorithm.

    ``wrong_ahead`` counts, per query, the other-class references with similarity >= its best
    same-class similarity (so its first correct position is ``wrong_ahead + 1``). With
    ``track_top`` a query whose first correct position is still <= R keeps its R-1 largest
    other-class similarities at or above its R-th same-class similarity (all MAP@R needs).
    ``settled_at`` (per query) is the count from which its metrics can no longer change (a miss at
    every K, AP@R = 0): past it, a query may be left out of the remaining blocks.
    """

    def __init__(
        self, relevant: torch.Tensor, track_top: bool, dtype: torch.dtype, settled_at: torch.Tensor
    ) -> None:
        device = relevant.device
        self.relevant = relevant
        self.settled_at = torch.where(relevant > 0, settled_at, 0)
        self.same = torch.full((len(relevant), int(relevant.max())), -math.inf, dtype=dtype, device=device)
        self.best = torch.full((len(relevant),), math.inf, dtype=dtype, device=device)
        self.lowest = self.best.clone()
        self.wrong_ahead = torch.zeros_like(relevant)
        self.slots = (relevant - 1).clamp(min=0)
        self.top_width = int(self.slots.max()) if track_top else 0
        self.top = torch.full((len(relevant), self.top_width), -math.inf, dtype=dtype, device=device)
        # a proven lower bound on each query's (R-1)-th largest other-class similarity, when known
        self.floor = torch.full((len(relevant),), -math.inf, dtype=dtype, device=device)

    def set_same(self, rows: slice, values: torch.Tensor) -> None:
        """Same-class similarities of queries ``rows``, sorted decreasing (extra columns ignored)."""
        width = min(values.shape[1], self.same.shape[1])
        self.same[rows, :width] = values[:, :width]
        self.refresh(rows)

    def refresh(self, rows: slice) -> None:
        """Take in the same-class similarities written into ``self.same[rows]``."""
        relevant = self.relevant[rows]
        if not self.same.shape[1]:
            return
        has_same = relevant > 0
        same = self.same[rows]
        self.best[rows] = torch.where(has_same, same[:, 0], math.inf)
        lowest = same.gather(1, (relevant - 1).clamp(min=0)[:, None]).squeeze(1)
        self.lowest[rows] = torch.where(has_same, lowest, math.inf)

    def open_rows(self, rows: slice) -> torch.Tensor:
        """Positions within ``rows`` of the queries whose metrics can still change."""
        return (self.wrong_ahead[rows] < self.settled_at[rows]).nonzero().squeeze(1)

    def raise_floor(self, rows: slice | torch.Tensor, floor: torch.Tensor) -> None:
        """Take in lower bounds on the (R-1)-th largest other-class similarity of queries ``rows``:
        entries below them can never enter the top R-1, and are skipped."""
        self.floor[rows] = torch.maximum(self.floor[rows], floor.to(self.floor.dtype))

    def thresholds(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """Per query: the similarity from which an entry would change its state now."""
        return self._thresholds(rows)[0]

    def _thresholds(self, rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query: the similarity from which entries matter now, and whether it is tracked."""
        best = self.best[rows]
        if not self.top_width:
            return best, torch.zeros_like(best, dtype=torch.bool)
        slots = self.slots[rows]
        tracked = (slots > 0) & (self.wrong_ahead[rows] <= slots)
        kth = self.top[rows].gather(1, (slots - 1).clamp(min=0)[:, None]).squeeze(1)
        entry = torch.minimum(torch.maximum(torch.maximum(self.lowest[rows], kth), self.floor[rows]), best)
        return torch.where(tracked, entry, best), tracked

    def consume(
        self, block: torch.Tensor, rows: slice | torch.Tensor, along_columns: bool, work: Workspace
    ) -> None:
        """Update queries ``rows`` (a slice, or the index of each) from a block of other-class
        similarities (same-class masked to -inf) whose rows, or columns when ``along_columns``, are
        those queries."""
        count = block.shape[1] if along_columns else block.shape[0]
        threshold, tracked = self._thresholds(rows)
        dim = 1 if along_columns else 0
        # a query whose largest entry is below its threshold learns nothing from this block
        hot = (block.amax(dim=1 - dim) >= threshold).nonzero().squeeze(1)
        if not len(hot):
            return
        if _HOT_RATIO * len(hot) <= count:
            shape = (len(hot), block.shape[1]) if dim == 0 else (block.shape[0], len(hot))
            block = torch.index_select(block, dim, hot, out=work.view(work.hot, *shape))
            rows, threshold, tracked, count = _indices(rows, hot), threshold[hot], tracked[hot], len(hot)
        if self.top_width and 2 * int((tracked & (self.top[rows, 0] == -math.inf)).sum()) >= count:
            # most of these queries see their first entries: they all need a top-k, skip the count
            local = tracked.nonzero().squeeze(1)
            self._take_dense(block, local, rows, threshold[local], dim, work, count_all=True)
            return
        flags = work.view(work.flags, *block.shape)
        if along_columns:
            torch.ge(block, threshold[None, :], out=flags)
            above = torch.mv(flags.T, flags.new_ones(block.shape[0]))
        else:
            torch.ge(block, threshold[:, None], out=flags)
            above = torch.mv(flags, flags.new_ones(block.shape[1]))
        above = above.to(torch.int64)
        hit = tracked & (above > 0)
        self.wrong_ahead[rows] += torch.where(hit, 0, above)
        local = hit.nonzero().squeeze(1)
        if not len(local):
            return
        if int(above[local].sum()) * _SPARSE_RATIO <= len(local) * block.shape[1 - dim]:
            self._take_sparse(block, flags, local, _indices(rows, local), dim, work)
        else:
            self._take_dense(block, local, rows, threshold[local], dim, work)

    def _take_sparse(
        self,
        block: torch.Tensor,
        flags: torch.Tensor,
        local: torch.Tensor,
        queries: torch.Tensor,
        dim: int,
        work: Workspace,
    ) -> None:
        """Few entries at or above the thresholds in the block rows ``local`` (each has some), those
        of ``queries``: list them, then a top-k over each query's few."""
        shape = (len(local), block.shape[1]) if dim == 0 else (block.shape[0], len(local))
        where = torch.index_select(flags, dim, local, out=work.view(work.picked, *shape)).nonzero()
        group, other = where[:, dim], where[:, 1 - dim]  # row-major: grouped by row
        values = block[local[group], other] if dim == 0 else block[other, local[group]]
        if dim == 1:  # group by column
            order = _stable_order(group)
            group, values = group[order], values[order]
        sizes = torch.bincount(group, minlength=len(local))
        at_best = (values >= self.best[queries][group]).to(torch.int64)
        self.wrong_ahead[queries] += torch.zeros_like(local).index_add_(0, group, at_best)
        position = torch.arange(len(group), device=group.device) - (torch.cumsum(sizes, 0) - sizes)[group]
        width = self.top_width
        merged = torch.full(
            (len(local), width + int(sizes.max())), -math.inf, dtype=values.dtype, device=values.device
        )
        merged[:, :width] = self.top[queries]
        merged[group, width + position] = values
        self.top[queries] = torch.topk(merged, width, dim=1).values

    def _take_dense(
        self,
        block: torch.Tensor,
        local: torch.Tensor,
        rows: slice | torch.Tensor,
        threshold: torch.Tensor,
        dim: int,
        work: Workspace,
        count_all: bool = False,
    ) -> None:
        """Many entries above the thresholds (a query's first blocks): top-k of whole rows ``local``
        of the block (queries ``rows``). With ``count_all`` also counts, for every query of the
        block, the entries at or above its best."""
        queries = _indices(rows, local)
        count, length = block.shape[dim], block.shape[1 - dim]
        every = count_all or 2 * len(local) >= count  # work on all rows, keep those of ``local``
        if every:
            picked = block if dim == 0 else work.view(work.picked, count, length).copy_(block.T)
            picked_best = self.best[rows]
        else:
            picked = work.view(work.picked, len(local), length)
            if dim == 0:
                torch.index_select(block, 0, local, out=picked)
            else:
                picked.copy_(block.index_select(1, local).T)
            picked_best = self.best[queries]
        flags = torch.ge(picked, picked_best[:, None], out=work.view(work.flags, *picked.shape))
        at_best = torch.mv(flags, flags.new_ones(length)).to(torch.int64)
        if count_all:
            self.wrong_ahead[rows] += at_best
        else:
            self.wrong_ahead[queries] += at_best[local] if every else at_best
        width = min(int(self.slots[queries].max()), length)
        candidates = torch.topk(picked, width, dim=1).values
        candidates = candidates[local] if every else candidates
        candidates.masked_fill_(candidates < threshold[:, None], -math.inf)
        merged = torch.cat([self.top[queries], candidates], dim=1)
        self.top[queries] = torch.topk(merged, self.top_width, dim=1).values

    def average_precision_and_r_precision(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query AP@R and R-Precision (float64; nan where R = 0)."""
        relevant = self.relevant[:, None]
        r_max = self.same.shape[1]
        if self.top_width:
            top = self.top.masked_fill(
                torch.arange(self.top_width, device=self.top.device) >= self.slots[:, None], -math.inf
            )
            below = torch.searchsorted(top.flip(1).contiguous(), self.same.contiguous())
            wrong = torch.maximum(self.top_width - below, self.wrong_ahead[:, None])
        else:
            wrong = self.wrong_ahead[:, None].expand(-1, r_max)
        position_among_correct = torch.arange(1, r_max + 1, device=self.same.device)[None, :]
        position = position_among_correct + wrong
        counted = (position_among_correct <= relevant) & (position <= relevant)
        precision = torch.where(counted, position_among_correct / position.to(torch.float64), 0.0)
        denominator = self.relevant.to(torch.float64)
        denominator[self.relevant == 0] = math.nan
        return precision.sum(dim=1) / denominator, counted.sum(dim=1) / denominator
