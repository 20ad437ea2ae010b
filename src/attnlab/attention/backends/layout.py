"""From a mask predicate to a block layout, and the one cache of everything derived from a pattern.

The sequence is cut into blocks of ``block`` positions. A (query block, key block) pair is *kept* when the
predicate allows at least one (query, key) pair inside it, and *full* when it allows all of them. The
efficient backends visit only kept blocks and apply the predicate element-wise only where a block is
partial, from *mask tiles* (the predicate inside each partial block, evaluated once per shape).

Everything here is derived from (pattern, length, block, heads) and kept in ``DERIVED``, one bounded LRU
cache: layouts, mask tiles, the blocked backend's row plans, the Triton kernel's lists and Flex block masks.
Patterns are compared by name (which holds every parameter), so the cache survives rebuilding a pattern.
What depends on a batch's documents is never kept there (it refuses such keys); ``PER_BATCH`` keeps it for
the one forward pass whose layers share it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

from attnlab.attention.patterns import Pattern


class DerivedCache:
    """Least-recently-used cache, bounded by entry count. The only cache in the attention package."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], object]):
        if isinstance(key, tuple) and any(isinstance(part, Pattern) and "same_document" in part.name for part in key):
            raise ValueError(f"{key[0]}: a pattern with documents depends on the batch; it is never cached by name")
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        with torch.inference_mode(False):  # built once, used by every later pass: never as inference tensors,
            value = build()  # which a training step after an evaluation in the same process could not use
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


DERIVED = DerivedCache()


class PerBatch:
    """What is built from one batch's document ids (an explicit mask, a Flex block mask), built once per forward:
    every layer passes the same ``documents`` tensor, so values are kept while it is the one given. Holding the
    tensor keeps its identity from being reused by another."""

    def __init__(self):
        self._documents: torch.Tensor | None = None
        self._values: dict = {}

    def get(self, documents: torch.Tensor, key: Hashable, build: Callable[[], object]):
        if documents is not self._documents:
            self._documents, self._values = documents, {}
        if key not in self._values:
            self._values[key] = build()
        return self._values[key]


PER_BATCH = PerBatch()


@dataclass(frozen=True)
class BlockLayout:
    block: int
    seq_len: int
    n_heads: int  # heads the layout was evaluated for (1 when the pattern does not depend on the head)
    kept: torch.Tensor  # (n_heads, n_blocks, n_blocks) bool: block (i, j) has an allowed pair
    full: torch.Tensor  # (n_heads, n_blocks, n_blocks) bool: every pair in block (i, j) is allowed
    allowed_pairs: int  # exact number of allowed (query, key) pairs, summed over the layout's heads

    @property
    def n_blocks(self) -> int:
        return self.kept.shape[-1]

    def kept_pairs(self) -> int:
        """Number of kept (head, query block, key block) triples."""
        return int(self.kept.sum())


def layout_heads(pattern: Pattern, n_heads: int) -> int:
    return n_heads if pattern.per_head else 1


def block_layout(pattern: Pattern, seq_len: int, block: int, n_heads: int = 1) -> BlockLayout:
    """Evaluate ``pattern`` over a seq_len x seq_len grid, a few block rows at a time (never an n x n mask),
    and reduce it to blocks. Positions past ``seq_len`` (padding of the last block) count as masked."""
    if block < 1:
        raise ValueError(f"block size must be >= 1, got {block}")
    heads = layout_heads(pattern, n_heads)
    return DERIVED.get(("layout", pattern, seq_len, block, heads),
                       lambda: _build_layout(pattern, seq_len, block, heads))


def _build_layout(pattern: Pattern, seq_len: int, block: int, n_heads: int) -> BlockLayout:
    nb = -(-seq_len // block)  # ceil
    padded = nb * block
    kept = torch.zeros(n_heads, nb, nb, dtype=torch.bool)
    full = torch.zeros(n_heads, nb, nb, dtype=torch.bool)
    rows_per_chunk = max(1, (1 << 24) // max(1, n_heads * block * padded))  # ~2^24 predicate values per chunk
    h = torch.arange(n_heads).view(-1, 1, 1)  # (H, 1, 1)
    k = torch.arange(padded).view(1, 1, -1)  # (1, 1, P)
    b = torch.zeros((), dtype=torch.long)
    pairs = 0
    for r0 in range(0, nb, rows_per_chunk):
        r1 = min(nb, r0 + rows_per_chunk)
        q = torch.arange(r0 * block, r1 * block).view(1, -1, 1)  # (1, rows*block, 1)
        allowed = (pattern(b, h, q, k) & (q < seq_len) & (k < seq_len)).expand(n_heads, -1, -1)  # (H, rows*block, P)
        pairs += int(allowed.sum())
        allowed = allowed.reshape(n_heads, r1 - r0, block, nb, block)
        kept[:, r0:r1] = allowed.any(dim=4).any(dim=2)  # (H, rows, nb)
        full[:, r0:r1] = allowed.all(dim=4).all(dim=2)
    return BlockLayout(block, seq_len, n_heads, kept, full, pairs)


@dataclass(frozen=True)
class MaskTiles:
    """The predicate inside the partial blocks, evaluated once per shape.

    tile_id[h, i, j]: index into ``tiles`` of block (i, j)'s mask, -1 when the block is full (no mask needed)
    or not kept. Identical tiles are stored once (the fixed pattern's summary blocks all look alike).
    """

    tile_id: torch.Tensor  # (Hl, nb, nb) long
    tiles: torch.Tensor  # (P, block, block) bool, P >= 1


def mask_tiles(pattern: Pattern, layout: BlockLayout) -> MaskTiles:
    return DERIVED.get(("tiles", pattern, layout.seq_len, layout.block, layout.n_heads),
                       lambda: _build_tiles(pattern, layout))


def _build_tiles(pattern: Pattern, layout: BlockLayout) -> MaskTiles:
    block, n = layout.block, layout.seq_len
    h, i, j = (layout.kept & ~layout.full).nonzero(as_tuple=True)  # the partial blocks
    ar = torch.arange(block)
    b = torch.zeros((), dtype=torch.long)
    chunks = []
    for c in range(0, len(h), 4096):  # bounded memory: 4096 tiles at a time
        hh, ii, jj = h[c:c + 4096], i[c:c + 4096], j[c:c + 4096]
        q = (ii * block).view(-1, 1, 1) + ar.view(1, -1, 1)  # (P', block, 1)
        k = (jj * block).view(-1, 1, 1) + ar.view(1, 1, -1)  # (P', 1, block)
        chunks.append(pattern(b, hh.view(-1, 1, 1), q, k) & (q < n) & (k < n))  # (P', block, block)
    tile_id = torch.full(layout.kept.shape, -1, dtype=torch.long)
    if not chunks:
        return MaskTiles(tile_id, torch.ones(1, block, block, dtype=torch.bool))
    flat = torch.cat(chunks).reshape(len(h), -1)  # (P, block*block)
    tiles, inverse = torch.unique(flat, dim=0, return_inverse=True)
    tile_id[h, i, j] = inverse
    return MaskTiles(tile_id, tiles.reshape(-1, block, block))


@dataclass(frozen=True)
class KeptLists:
    """The kept blocks of each row as a list: the form every block-sparse loop walks.

    A row is one (layout head, block) pair; ``block_idx[h, r, t]`` is the t-th kept column of row r in
    ascending order (0 past ``count``), ``tile[h, r, t]`` the index of its mask tile, -1 for a full block
    (and past ``count``). Built from a layout for query rows (key columns) or, transposed, for key rows.
    """

    block_idx: torch.Tensor  # (Hl, nb, max_kept) long
    count: torch.Tensor  # (Hl, nb) long
    tile: torch.Tensor  # (Hl, nb, max_kept) long


def kept_lists(kept: torch.Tensor, tile_id: torch.Tensor) -> KeptLists:
    """kept (Hl, R, C) bool and tile ids (Hl, R, C) -> per-row lists of kept columns."""
    H, R, C = kept.shape
    count = kept.sum(-1)  # (Hl, R)
    max_kept = max(1, int(count.max())) if count.numel() else 1
    cols = torch.arange(C).expand(H, R, C)
    ordered = torch.where(kept, cols, cols + C).sort(-1).values[..., :max_kept]  # kept columns first, ascending
    valid = ordered < C
    idx = torch.where(valid, ordered, torch.zeros_like(ordered))  # (Hl, R, max_kept)
    tile = torch.gather(tile_id, 2, idx).masked_fill(~valid, -1)
    return KeptLists(idx, count, tile)


def query_lists(pattern: Pattern, seq_len: int, block: int, n_heads: int) -> KeptLists:
    """For each query block, the key blocks it sees."""
    lay = block_layout(pattern, seq_len, block, n_heads)
    return DERIVED.get(("query_lists", pattern, seq_len, block, lay.n_heads),
                       lambda: kept_lists(lay.kept, mask_tiles(pattern, lay).tile_id))


def key_lists(pattern: Pattern, seq_len: int, block: int, n_heads: int) -> KeptLists:
    """For each key block, the query blocks that see it (the transposed layout; dK and dV walk it)."""
    lay = block_layout(pattern, seq_len, block, n_heads)
    return DERIVED.get(("key_lists", pattern, seq_len, block, lay.n_heads),
                       lambda: kept_lists(lay.kept.transpose(1, 2), mask_tiles(pattern, lay).tile_id.transpose(1, 2)))


def allowed_pairs(pattern: Pattern, seq_len: int, n_heads: int = 1) -> int:
    """Exact number of allowed (query, key) pairs per head, averaged over heads: what the scores cost."""
    lay = block_layout(pattern, seq_len, 128, n_heads)
    return lay.allowed_pairs // lay.n_heads
