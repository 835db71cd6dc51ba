"""Ranking engine: the block sweep over queries x references that feeds the per-query state.

How it is computed, exactly and in bounded memory: items are sorted by class (for MAP@R classes are
first grouped by a small k-means, so that similar classes share blocks) and the similarity matrix
is built block by block (``block_size`` x ``block_size``, 4096 by default), never
whole; in leave-one-out only the upper triangle (each block serves its rows and its columns).
Blocks are cut at class boundaries, so the block of a query's class-mates (the diagonal block in
leave-one-out) comes first and gives its same-class similarities (classes larger than half a
block have theirs computed on their own). Same-class entries are then masked out of every block.
Per query, one comparison per block counts the other-class references at or above its best
same-class similarity: Recall@K for every K from that one count. For MAP@R a query whose first
same-class reference is still within its first R also keeps its R-1 largest other-class
similarities at or above its R-th same-class one, fed only by the entries above a running
threshold; a query whose largest entry in a block is below its threshold is left out of that block.
Query -> gallery: after the home block, the other references come in narrower blocks, nearest first,
and a query whose count ahead reached max(K, R) (its metrics can no longer change) leaves the
products. No n x n matrix and no sort of a row; memory is four blocks, a sorted copy of the
embeddings and O(n * R_max). On the CPU the block products go through numpy's BLAS (OpenBLAS,
faster than torch's MKL on AMD processors).
Behind the bfloat16 screen (query -> gallery in float32, where the CPU multiplies bfloat16
natively; see :mod:`harness.evaluate.screen`) each block is first computed in bfloat16; only the
entries that may reach their query's threshold under the screen's error bound are then computed
exactly (pair by pair, or whole rows when many), the rest standing at -inf. A home block first
gives each tracked query a proven floor on its (R-1)-th largest other-class similarity. The first
home block is screened on a few rows first, and the screen is given up once the exact work it
leaves passes 1/WORTH of what it screens. With a screen, every product is torch's (OpenBLAS's
spinning threads would slow oneDNN's) and torch keeps all its threads.
"""

from __future__ import annotations

import bisect
import itertools
import math
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import UserError
from harness.evaluate.inputs import ArrayLike, SortedSets, one_thread_on_cpu, sort_by_class
from harness.evaluate.screen import PAIR_COST, Screen, wanted
from harness.evaluate.state import QueryState, Workspace

DEFAULT_BLOCK_SIZE = 4096
# Largest number of elements of one per-query state table (same-class similarities, top other-class
# similarities); past it, queries are processed in chunks (without the symmetric saving).
STATE_BUDGET = 1 << 25
# Columns of the blocks against references outside a query block's classes (narrower than the query
# blocks: a block stays in cache for the passes after its product, and queries whose metrics are
# settled leave the sweep sooner).
GALLERY_COLUMNS = 1024
# Settled queries stay in a block's product unless fewer than 1/_ALL_ROWS_RATIO of its queries are open.
_ALL_ROWS_RATIO = 1.1
ONE_THREAD_GALLERY = True
# Behind the screen, rows whose candidate entries are at most 1/_ of their block get only those
# computed exactly (pair by pair); denser ones get the exact block product.
_SCREEN_SPARSE_RATIO = 16
# The first screened block is tried on this many rows first: data that the screen cannot thin out
# (random embeddings) then costs it little.
_PROBE_ROWS = 256
# Pairs computed at once from their two rows (bounds that step's memory).
_PAIRS_AT_ONCE = 4096
# Same-class similarities computed at once (bounds that step's memory).
_PAIR_ELEMENTS = 1 << 23


def _same_class_from_block(
    sets: SortedSets, block: torch.Tensor, rows: tuple[int, int], home: tuple[int, int]
) -> torch.Tensor:
    """Same-class similarities of sorted queries ``rows``, read from their block against ``home``
    (references holding all their class-mates): sorted decreasing, padded with -inf. The same-class
    entries of the block (the query itself included) are then set to -inf."""
    device = block.device
    query_class = sets.query_class[rows[0] : rows[1]]
    counts = sets.reference_count[query_class]
    slot = torch.arange(int(counts.max()), device=device)
    columns = (sets.reference_start[query_class] - home[0])[:, None] + slot
    invalid = slot >= counts[:, None]
    if sets.leave_one_out:  # the query itself, by index
        invalid |= columns == torch.arange(rows[0] - home[0], rows[1] - home[0], device=device)[:, None]
    columns.clamp_(max=block.shape[1] - 1)
    values = block.gather(1, columns).masked_fill_(invalid, -math.inf)
    flat = columns + torch.arange(0, block.numel(), block.shape[1], device=device)[:, None]
    block.view(-1).index_fill_(0, flat[slot < counts[:, None]], -math.inf)
    return torch.sort(values, dim=1, descending=True).values


def _same_class_by_class(sets: SortedSets, first: int, stop: int, table: torch.Tensor) -> None:
    """Same-class similarities of sorted queries ``first:stop`` into ``table`` (sorted decreasing),
    when no block holds all their class-mates: each class's queries times its references, classes
    of equal sizes in one batch, a huge class in pieces of rows."""
    device, dims = sets.queries.device, sets.queries.shape[1]
    ranges = sets.ranges
    query_class, query_start, query_end = ranges.query_class, ranges.query_start, ranges.query_end
    reference_start, reference_end = ranges.reference_start, ranges.reference_end
    pieces: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (queries, references) -> starts
    for cls in range(query_class[first], query_class[stop - 1] + 1):
        q0, q1 = max(query_start[cls], first), min(query_end[cls], stop)
        width = reference_end[cls] - reference_start[cls]
        step = max(1, _PAIR_ELEMENTS // (width + dims))
        for start in range(q0, q1 if width > int(sets.leave_one_out) else q0, step):
            pieces.setdefault((min(step, q1 - start), width), []).append((start, reference_start[cls]))
    for (rows, width), starts in pieces.items():
        per_batch = max(1, _PAIR_ELEMENTS // (rows * width + (rows + width) * dims))
        for batch in torch.tensor(starts, device=device).split(per_batch):
            query_index = batch[:, :1] + torch.arange(rows, device=device)
            reference_index = batch[:, 1:] + torch.arange(width, device=device)
            if len(batch) == 1:  # one class (maybe huge): views, no copies
                queries = sets.queries[query_index[0, 0] : query_index[0, -1] + 1][None]
                references = sets.references[reference_index[0, 0] : reference_index[0, -1] + 1][None]
            else:
                queries = sets.queries[query_index]
                same_rows = sets.leave_one_out and rows == width and bool((batch[:, 0] == batch[:, 1]).all())
                references = queries if same_rows else sets.references[reference_index]
            products = torch.bmm(queries, references.transpose(1, 2))
            if sets.leave_one_out:  # the query itself, by index
                products.masked_fill_(reference_index[:, None, :] == query_index[:, :, None], -math.inf)
            values = torch.sort(products, dim=2, descending=True).values[..., : table.shape[1]]
            table[(query_index - first).reshape(-1), : values.shape[2]] = values.reshape(-1, values.shape[2])


def _bounds(total: int, size: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into near-equal consecutive pieces of at most ``size``."""
    pieces = max(1, -(-total // size))
    edges = [round(i * total / pieces) for i in range(pieces + 1)]
    return list(itertools.pairwise(edges))


def _mask_same_class(
    block: torch.Tensor, sets: SortedSets, rows: tuple[int, int], cols: tuple[int, int]
) -> None:
    """Set the same-class entries (the query itself included) of a block to -inf."""
    ranges = sets.ranges
    query_class, query_start, query_end = ranges.query_class, ranges.query_start, ranges.query_end
    reference_class, reference_start, reference_end = (
        ranges.reference_class,
        ranges.reference_start,
        ranges.reference_end,
    )
    first = max(query_class[rows[0]], reference_class[cols[0]])
    last = min(query_class[rows[1] - 1], reference_class[cols[1] - 1])
    for cls in range(first, last + 1):
        r0, r1 = max(query_start[cls], rows[0]), min(query_end[cls], rows[1])
        c0, c1 = max(reference_start[cls], cols[0]), min(reference_end[cls], cols[1])
        if r0 < r1 and c0 < c1:
            block[r0 - rows[0] : r1 - rows[0], c0 - cols[0] : c1 - cols[0]] = -math.inf


def _mask_same_class_of(
    block: torch.Tensor, sets: SortedSets, queries: torch.Tensor, cols: tuple[int, int]
) -> None:
    """Set the same-class entries of a block of sorted queries ``queries`` x references ``cols``
    to -inf."""
    reference_class = torch.as_tensor(sets.ranges.reference_class[cols[0] : cols[1]], device=block.device)
    block.masked_fill_(sets.query_class[queries][:, None] == reference_class[None, :], -math.inf)


def _row_blocks(sets: SortedSets, first: int, stop: int, size: int) -> list[tuple[int, int]]:
    """Blocks of sorted queries ``first:stop`` of at most ``size``, cut at class boundaries unless a
    class is longer than half a block."""
    ends = sets.ranges.query_end
    points = [first, *ends[bisect.bisect_right(ends, first) : bisect.bisect_left(ends, stop)], stop]
    longest = max(b - a for a, b in itertools.pairwise(points))
    if 2 * longest > size:
        return [(first + a, first + b) for a, b in _bounds(stop - first, size)]
    pieces = -(-(stop - first) // (size - longest))
    edges = [first]
    for piece in range(1, pieces):  # the class boundary at or before each even cut
        edge = points[bisect.bisect_right(points, first + (piece * (stop - first)) // pieces) - 1]
        if edge > edges[-1]:
            edges.append(edge)
    return list(itertools.pairwise([*edges, stop]))


def _home(sets: SortedSets, rows: tuple[int, int]) -> tuple[int, int]:
    """The references of the classes of sorted queries ``rows`` (with any class between them)."""
    ranges = sets.ranges
    return (
        ranges.reference_start[ranges.query_class[rows[0]]],
        ranges.reference_end[ranges.query_class[rows[1] - 1]],
    )


def _sweep(
    sets: SortedSets,
    state: QueryState,
    first: int,
    size: int,
    work: Workspace,
    screen: Screen | None,
    threads: ExitStack,
) -> None:
    """Every block of queries x references, each query's class-mates first: the blocks that hold
    them give its same-class similarities (or they are computed on their own, for huge classes).
    Query -> gallery without a screen, torch's small steps run on one thread (``threads`` holds
    that setting; a screen given up mid-sweep enters it)."""
    stop = first + len(state.relevant)

    def one_thread() -> None:
        if not sets.leave_one_out and ONE_THREAD_GALLERY:  # many small steps between the products
            threads.enter_context(one_thread_on_cpu(sets.queries.device))

    def give_up_if_not_worth_it() -> None:
        nonlocal screen
        if screen is not None and screen.given_up:
            screen = None
            one_thread()

    if screen is None:
        one_thread()
    give_up_if_not_worth_it()  # given up in an earlier chunk of queries

    def product(rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        block = work.view(work.product, rows[1] - rows[0], cols[1] - cols[0])
        _product(sets.queries[rows[0] : rows[1]], sets.references[cols[0] : cols[1]], block, screen is None)
        return block

    def consume(
        block: torch.Tensor,
        rows: tuple[int, int],
        cols: tuple[int, int],
        columns_too: bool,
        masked: bool = False,
    ) -> None:
        if not masked:
            _mask_same_class(block, sets, rows, cols)
        state.consume(block, slice(rows[0] - first, rows[1] - first), False, work)
        if columns_too:
            state.consume(block, slice(cols[0] - first, cols[1] - first), True, work)

    def consume_rows(
        rows: tuple[int, int], cols: tuple[int, int], positions: torch.Tensor, home: bool = False
    ) -> int:
        """The exact product of the queries at ``positions`` within ``rows`` (settled ones, or ones
        the screen cleared, left out), or of all of ``rows`` when that is nearly all (counts past
        settled only grow); ``home``: ``cols`` holds their class-mates, masked out. Returns the
        number of entries computed."""
        if _ALL_ROWS_RATIO * len(positions) >= rows[1] - rows[0]:
            block = product(rows, cols)
            consume(block, rows, cols, False, masked=not home)
            return block.numel()
        if not len(positions):
            return 0
        block = work.view(work.product, len(positions), cols[1] - cols[0])
        queries = work.view(work.queries, len(positions), sets.queries.shape[1])
        torch.index_select(sets.queries[rows[0] : rows[1]], 0, positions, out=queries)
        _product(queries, sets.references[cols[0] : cols[1]], block, screen is None)
        if home:
            _mask_same_class_of(block, sets, positions + rows[0], cols)
        state.consume(block, positions + (rows[0] - first), False, work)
        return block.numel()

    def consume_screened(
        rows: tuple[int, int], cols: tuple[int, int], positions: torch.Tensor, home: bool = False
    ) -> None:
        """:func:`consume_rows` behind the bfloat16 screen: only rows that may hold an entry at or
        above their threshold are taken, and when such entries are few only they are computed
        exactly (the rest of those rows left at -inf, below every threshold). In a ``home`` block
        the screened (R-1)-th largest other-class entries first give each query a proven floor."""
        assert screen is not None
        if home or _ALL_ROWS_RATIO * len(positions) >= rows[1] - rows[0]:
            positions = torch.arange(rows[1] - rows[0], device=positions.device)
            block = screen.product(slice(*rows), cols)
        else:
            block = screen.product(positions + rows[0], cols)
        queries, index = positions + rows[0], positions + (rows[0] - first)
        if home:
            _mask_same_class(block, sets, rows, cols)
            if state.top_width:
                state.raise_floor(index, screen.floors(block, queries, state.slots[index]))
        limit = screen.limits(queries, state.thresholds(index))
        reach = screen.may_reach(block, limit)
        if not len(reach):
            screen.record(block.numel(), 0)
            return
        hot = block if len(reach) == block.shape[0] else torch.index_select(block, 0, reach)
        flags = hot >= limit[reach][:, None]
        pairs = int(torch.count_nonzero(flags))
        if pairs * _SCREEN_SPARSE_RATIO > flags.numel():
            screen.record(block.numel(), consume_rows(rows, cols, positions[reach], home))
            return
        screen.record(block.numel(), pairs * PAIR_COST)
        pair_row, pair_col = flags.nonzero().unbind(1)
        exact = work.view(work.product, len(reach), cols[1] - cols[0]).fill_(-math.inf)
        exact[pair_row, pair_col] = _pair_products(
            sets.queries, queries[reach][pair_row], sets.references, pair_col + cols[0]
        )
        state.consume(exact, index[reach], False, work)

    def consume_open(rows: tuple[int, int], cols: tuple[int, int]) -> bool:
        """Only the queries of ``rows`` whose metrics can still change (block without class-mates);
        False when none is left."""
        open_rows = state.open_rows(slice(rows[0] - first, rows[1] - first))
        if not len(open_rows):
            return False
        if screen is None:
            consume_rows(rows, cols, open_rows)
        else:
            consume_screened(rows, cols, open_rows)
            give_up_if_not_worth_it()
        return True

    row_blocks = _row_blocks(sets, first, stop, size)
    homes = [_home(sets, rows) for rows in row_blocks]
    if sets.leave_one_out and (first, stop) == (0, sets.queries.shape[0]):  # symmetric: upper triangle
        if homes != row_blocks:  # a huge class: same-class similarities on their own
            _same_class_by_class(sets, first, stop, state.same)
            state.refresh(slice(None))
        for rows in row_blocks:  # diagonal blocks first: they hold all class-mates
            block = product(rows, rows)
            if homes == row_blocks:
                state.set_same(slice(rows[0], rows[1]), _same_class_from_block(sets, block, rows, rows))
            consume(block, rows, rows, False, masked=homes == row_blocks)
        for i, rows in enumerate(row_blocks):
            for cols in row_blocks[i + 1 :]:
                consume(product(rows, cols), rows, cols, True)
        return
    references = sets.references.shape[0]
    for rows, home in zip(row_blocks, homes, strict=True):
        local = slice(rows[0] - first, rows[1] - first)
        if home[1] == home[0]:  # no class-mate anywhere
            others = _bounds(references, size)
        elif home[1] - home[0] <= size:
            if screen is None:
                block = product(rows, home)
                state.set_same(local, _same_class_from_block(sets, block, rows, home))
                consume(block, rows, home, False, masked=True)
            else:  # same-class similarities by class, the rest of the block screened
                _same_class_by_class(sets, rows[0], rows[1], state.same[local])
                state.refresh(local)
                parts = [rows]
                if not screen.screened and rows[1] - rows[0] > 2 * _PROBE_ROWS:  # try it on a few first
                    parts = [(rows[0], rows[0] + _PROBE_ROWS), (rows[0] + _PROBE_ROWS, rows[1])]
                for part in parts:
                    if screen is None:
                        consume(product(part, home), part, home, False)
                    else:
                        consume_screened(
                            part, home, state.open_rows(slice(part[0] - first, part[1] - first)), True
                        )
                        give_up_if_not_worth_it()
            width = min(size, GALLERY_COLUMNS)
            others = [(a, b) for a, b in _bounds(home[0], width) if b > a]
            others += [(home[1] + a, home[1] + b) for a, b in _bounds(references - home[1], width) if b > a]
        else:
            _same_class_by_class(sets, rows[0], rows[1], state.same[local])
            state.refresh(local)
            others = _bounds(references, size)
        for cols in sorted(others, key=lambda cols: abs(cols[0] + cols[1] - home[0] - home[1])):
            if cols[0] < home[1] and home[0] < cols[1]:  # holds class-mates (a huge class): all rows
                consume(product(rows, cols), rows, cols, False)
            elif not consume_open(rows, cols):
                break


def _pair_products(
    queries: torch.Tensor, query_index: torch.Tensor, references: torch.Tensor, reference_index: torch.Tensor
) -> torch.Tensor:
    """The inner products of the given (query, reference) pairs, in bounded memory."""
    out = torch.empty(len(query_index), dtype=queries.dtype, device=queries.device)
    for start in range(0, len(out), _PAIRS_AT_ONCE):
        stop = start + _PAIRS_AT_ONCE
        pairs = queries[query_index[start:stop]] * references[reference_index[start:stop]]
        torch.sum(pairs, dim=1, out=out[start:stop])
    return out


def _product(queries: torch.Tensor, references: torch.Tensor, out: torch.Tensor, numpy_blas: bool) -> None:
    """``out = queries @ references.T``; on the CPU through numpy's BLAS with ``numpy_blas``
    (OpenBLAS, faster than torch's MKL on AMD processors)."""
    if out.device.type == "cpu" and numpy_blas:
        np.matmul(queries.numpy(), references.numpy().T, out=out.numpy())
    else:
        torch.mm(queries, references.T, out=out)


def _query_chunks(sets: SortedSets) -> list[tuple[int, int]]:
    """Consecutive sorted-query ranges whose state tables fit :data:`STATE_BUDGET`."""
    widths = sets.reference_count[sets.query_class]
    if len(widths) * int(widths.max()) <= STATE_BUDGET:
        return [(0, len(widths))]
    per_query = widths.tolist()
    chunks, first, widest = [], 0, 0
    for index, width in enumerate(per_query):
        widest = max(widest, width)
        if index > first and (index + 1 - first) * widest > STATE_BUDGET:
            chunks.append((first, index))
            first, widest = index, width
    chunks.append((first, len(per_query)))
    return chunks


@dataclass(frozen=True)
class Ranking:
    """Per query (in label-sorted order): other-class references ahead of the first correct one,
    R, and AP@R / R-Precision when asked for."""

    wrong_ahead: torch.Tensor
    relevant: torch.Tensor
    average_precision: torch.Tensor | None
    r_precision: torch.Tensor | None


def rank_queries(
    embeddings: ArrayLike,
    labels: ArrayLike,
    gallery: ArrayLike | None,
    gallery_labels: ArrayLike | None,
    track_top: bool,
    block_size: int | None,
    max_k: int | None,
) -> tuple[SortedSets, Ranking]:
    """Validate, sort and rank: the shared work of every public function. ``max_k``: the largest K
    of the Recall@K asked for (0: none), from which a query's count ahead no longer matters; None
    when exact counts are wanted."""
    size = DEFAULT_BLOCK_SIZE if block_size is None else int(block_size)
    if size < 1:
        raise UserError(f"block_size must be >= 1; got {block_size}")
    size = min(size, 1 << 24)  # counts are summed in float32: exact below 2**24
    sets = sort_by_class(embeddings, labels, gallery, gallery_labels, size if track_top else None)
    return sets, _rank_chunks(
        sets, track_top, min(size, max(sets.queries.shape[0], sets.references.shape[0])), max_k
    )


def _rank_chunks(sets: SortedSets, track_top: bool, size: int, max_k: int | None) -> Ranking:
    work = Workspace(size, size, sets.queries.shape[1], sets.queries.dtype, sets.queries.device)
    screen = None
    if wanted(sets.queries, sets.leave_one_out):
        screen = Screen(sets.queries, sets.references, size * size)
    parts = []
    for first, stop in _query_chunks(sets):
        relevant = sets.reference_count[sets.query_class[first:stop]] - int(sets.leave_one_out)
        if max_k is None:
            settled_at = torch.full_like(relevant, torch.iinfo(torch.int64).max)
        else:  # a miss at every K <= max_k, and AP@R = R-Precision = 0 past R
            settled_at = relevant.clamp(min=max_k) if track_top else torch.full_like(relevant, max_k)
        state = QueryState(relevant, track_top, sets.queries.dtype, settled_at)
        with ExitStack() as threads:
            _sweep(sets, state, first, size, work, screen, threads)
        extra = state.average_precision_and_r_precision() if track_top else (None, None)
        parts.append((state.wrong_ahead, relevant, *extra))
    return Ranking(
        wrong_ahead=torch.cat([p[0] for p in parts]),
        relevant=torch.cat([p[1] for p in parts]),
        average_precision=torch.cat([p[2] for p in parts]) if track_top else None,
        r_precision=torch.cat([p[3] for p in parts]) if track_top else None,
    )
