"""Low-precision screen of similarity blocks: a bfloat16 product with a proven bound on its error.

Where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), a bfloat16 block product costs a
quarter of the float32 one. The ranking engine computes each block in bfloat16 first and then, in
float32, only the entries (or whole rows, where they are many) that may reach their query's
threshold, so the results are those of the float32 engine, not approximations.

The bound. Write q = q_hi + q_lo with q_hi = bf16(q) (and r likewise). The screened value is the
bfloat16 rounding of s~, the float32-accumulated q_hi . r_hi (products of bfloat16 numbers are exact
in float32). With u = 2^-8 (bfloat16's unit roundoff) and g = d 2^-24 / (1 - d 2^-24):

    |bf16(s~) - s~| <= u |s~| <= u/(1-u) |bf16(s~)|        (one rounding of the output)
    |s~ - q_hi . r_hi| <= g |q_hi| |r_hi|                    (float32 accumulation, any order)
    |q_hi . r_hi - q . r| <= |q_hi||r_lo| + |q_lo||r_hi| + |q_lo||r_lo|
    |q . r - fl32(q . r)| <= g |q| |r|                       (the exact engine's own product)

so fl32(q . r) <= m + u/(1-u) |m| + slack(q) for every entry of a row whose largest screened entry is
m, with slack(q) the sum of the last three bounds over the references' largest norms (float32
norms and sums, rounded up past their own rounding). A row with m + u/(1-u)|m| + slack(q) below
its threshold holds no entry that the exact product would put at or above it. Subnormal bfloat16
inputs and products (below 2^-126) may be read or written as zero by the hardware; the slack keeps
an absolute term for them.
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = 2.0**-8
_GROWTH = UNIT_ROUNDOFF / (1 - UNIT_ROUNDOFF)  # the output rounding's bound, relative to the output
# bfloat16 subnormals (inputs, products, sums below 2^-126) may be read or written as zero.
_SMALLEST_NORMAL = 2.0**-126
# The slack's own float32 products and sums (a few roundings of 2^-24 each) are covered by this.
_ROUND_UP = 1.0 + 1e-5

# "auto": screen float32 query -> gallery rankings on CPUs that multiply bfloat16 natively;
# "always": on any CPU (bfloat16 emulated: slower, the same results; for tests); "never".
MODE = "auto"
# Rows whose norms are computed at once (in cache), and queries whose slack is computed together.
_CHUNK = 1024
# The screen is kept while the exact work it leaves stays below 1/WORTH of the entries it screens.
WORTH = 4
# An entry computed alone (pair by pair) costs about this many entries of a block product.
PAIR_COST = 8


def native_bfloat16(device: torch.device) -> bool:
    """Whether this device's CPU multiplies bfloat16 natively (a CUDA device: False, not screened)."""
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def wanted(queries: torch.Tensor, leave_one_out: bool) -> bool:
    """Whether a ranking of these sorted queries goes behind the screen (see :data:`MODE`)."""
    if leave_one_out or queries.dtype != torch.float32 or queries.device.type != "cpu" or MODE == "never":
        return False
    return MODE == "always" or native_bfloat16(queries.device)


class Screen:
    """bfloat16 copies of the sorted queries and references, and each query's error slack."""

    def __init__(self, queries: torch.Tensor, references: torch.Tensor, block_elements: int) -> None:
        self.buffer = torch.empty(block_elements, dtype=torch.bfloat16, device=queries.device)
        self.full_queries = queries
        self.queries = queries.bfloat16()
        self.references = references.bfloat16()
        dims = queries.shape[1]
        self.gamma = dims * 2.0**-24 / (1 - dims * 2.0**-24)
        self.reference_norms = torch.stack([x.max() for x in _norms(references, self.references)])
        # each query's slack, computed for a chunk of queries when first asked for
        self._slack = torch.empty(queries.shape[0], dtype=torch.float64, device=queries.device)
        self._known = torch.zeros(-(-queries.shape[0] // _CHUNK), dtype=torch.bool)
        self.screened = 0  # entries screened so far
        self.exact = 0  # exact work they still needed, in block-product entries

    def slack(self, query_index: torch.Tensor) -> torch.Tensor:
        """The error slack of sorted queries ``query_index`` (float64, rounded up)."""
        if not len(query_index):
            return self._slack[query_index]
        for chunk in range(int(query_index.min()) // _CHUNK, int(query_index.max()) // _CHUNK + 1):
            if not self._known[chunk]:
                rows = slice(chunk * _CHUNK, (chunk + 1) * _CHUNK)
                self._slack[rows] = self._slack_of(self.full_queries[rows], self.queries[rows])
                self._known[chunk] = True
        return self._slack[query_index]

    def _slack_of(self, queries: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        query_full, query_high, query_low = _norms(queries, high)
        reference_full, reference_high, reference_low = self.reference_norms
        slack = (
            query_high * reference_low
            + query_low * reference_high
            + query_low * reference_low
            + self.gamma * (query_high * reference_high + query_full * reference_full)
        )
        dims = queries.shape[1]
        flushed = _SMALLEST_NORMAL * (dims**0.5 * (query_full.double() + float(reference_full)) + 2 * dims)
        return slack.double() * _ROUND_UP + flushed

    def record(self, screened: int, exact: int) -> None:
        """Count a block's screened entries and the exact work left after the screen."""
        self.screened += screened
        self.exact += exact

    @property
    def given_up(self) -> bool:
        """Whether the exact work left has passed 1/:data:`WORTH` of the screened entries (data whose
        entries mostly reach their thresholds, random embeddings say): the sweep then stops screening
        and records no more."""
        return WORTH * self.exact > self.screened

    def product(self, query_index: torch.Tensor | slice, cols: tuple[int, int]) -> torch.Tensor:
        """The screened block of sorted queries ``query_index`` x references ``cols``."""
        queries = self.queries[query_index]
        width = cols[1] - cols[0]
        block = self.buffer[: queries.shape[0] * width].view(queries.shape[0], width)
        torch.mm(queries, self.references[cols[0] : cols[1]].T, out=block)
        return block

    def limits(self, query_index: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """Per query, the float32 value that a screened entry must reach for its exact value to
        possibly reach ``threshold``: x + c|x| + slack >= t exactly when x >= (t - slack) / (1 +- c)."""
        target = threshold.double() - self.slack(query_index)
        limit = torch.where(target >= 0, target / (1 + _GROWTH), target / (1 - _GROWTH))
        return _rounded_down(limit)

    def floors(self, block: torch.Tensor, query_index: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """Per block row, a proven lower bound on the exact ``ranks``-th largest entry of its row
        (-inf where the rank is 0 or past the row's finite entries): x - c|x| - slack of the
        screened one, the bound's other side."""
        width = min(int(ranks.max()), block.shape[1])
        if width == 0:
            return torch.full(ranks.shape, -torch.inf, device=block.device)
        kth = torch.topk(block, width, dim=1).values.double()
        kth = kth.gather(1, (ranks.clamp(min=1, max=width) - 1)[:, None]).squeeze(1)
        floor = kth - kth.abs() * _GROWTH - self.slack(query_index)
        usable = (ranks >= 1) & (ranks <= width) & torch.isfinite(kth)
        return _rounded_down(torch.where(usable, floor, -torch.inf))

    def may_reach(self, block: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """Positions of the block rows with an entry at or above their ``limit`` (from
        :meth:`limits`): the others hold no entry whose exact value reaches its threshold."""
        return (block.amax(dim=1) >= limit).nonzero().squeeze(1)


def _norms(full: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row norms of ``full``, of its bfloat16 rounding ``high`` and of the rest (exact in float32),
    each rounded up past float32's error ((d + 2) 2^-24); a chunk of rows at a time (in cache)."""
    up = 1.0 + (full.shape[1] + 2) * 2.0**-23
    parts: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, full.shape[0], _CHUNK):
        rows = full[start : start + _CHUNK]
        rounded = high[start : start + _CHUNK].float()
        for part, values in zip(parts, (rows, rounded, rows - rounded), strict=True):
            part.append(torch.linalg.vector_norm(values, dim=1) * up)
    return torch.cat(parts[0]), torch.cat(parts[1]), torch.cat(parts[2])


def _rounded_down(values: torch.Tensor) -> torch.Tensor:
    """float64 values to the float32 at or below each."""
    single = values.float()
    below = torch.nextafter(single, single.new_tensor(-torch.inf))
    return torch.where(single.double() > values, below, single)
