"""From a mask predicate to a block layout.

The sequence is cut into blocks of ``block`` positions. A (query block, key block) pair is *kept* when the
predicate allows at least one (query, key) pair inside it, and *full* when it allows all of them. Efficient
implementations visit only kept blocks and apply the predicate element-wise only where a block is partial.

The layout is computed exactly from the predicate, a few block rows at a time, so building it never holds
an n x n mask (it does evaluate the predicate n^2 times once; the result is cached per shape).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from attnlab.attention.patterns import Pattern


@dataclass(frozen=True)
class BlockLayout:
    block: int
    seq_len: int
    n_heads: int  # heads the layout was evaluated for (1 when the pattern does not depend on the head)
    kept: torch.Tensor  # (n_heads, n_blocks, n_blocks) bool: block (i, j) has an allowed pair
    full: torch.Tensor  # (n_heads, n_blocks, n_blocks) bool: every pair in block (i, j) is allowed
    allowed_pairs: int = 0  # exact number of allowed (query, key) pairs, summed over the layout's heads

    @property
    def n_blocks(self) -> int:
        return self.kept.shape[-1]

    def kept_pairs(self) -> int:
        """Number of kept (head, query block, key block) triples, per layout head."""
        return int(self.kept.sum())


def block_layout(pattern: Pattern, seq_len: int, block: int, n_heads: int = 1) -> BlockLayout:
    """Evaluate ``pattern`` over a seq_len x seq_len grid in block rows and reduce it to blocks.

    Positions past ``seq_len`` (padding of the last block) count as masked.
    """
    if block < 1:
        raise ValueError(f"block size must be >= 1, got {block}")
    return _block_layout(pattern, seq_len, block, n_heads if pattern.per_head else 1)


@lru_cache(maxsize=256)
def _block_layout(pattern: Pattern, seq_len: int, block: int, n_heads: int) -> BlockLayout:
    nb = -(-seq_len // block)  # ceil
    padded = nb * block
    kept = torch.zeros(n_heads, nb, nb, dtype=torch.bool)
    full = torch.zeros(n_heads, nb, nb, dtype=torch.bool)
    # rows of blocks per chunk so that one chunk holds about 2^24 predicate values
    rows_per_chunk = max(1, (1 << 24) // max(1, n_heads * block * padded))
    h = torch.arange(n_heads).view(-1, 1, 1)  # (H, 1, 1)
    k = torch.arange(padded).view(1, 1, -1)  # (1, 1, P)
    b = torch.zeros((), dtype=torch.long)
    pairs = 0
    for r0 in range(0, nb, rows_per_chunk):
        r1 = min(nb, r0 + rows_per_chunk)
        q = torch.arange(r0 * block, r1 * block).view(1, -1, 1)  # (1, rows*block, 1)
        allowed = pattern(b, h, q, k) & (q < seq_len) & (k < seq_len)  # (H, rows*block, P)
        allowed = allowed.expand(n_heads, -1, -1)
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
    key = ("tiles", id(layout))
    if key in _CACHE:
        return _CACHE[key][0]
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
    if chunks:
        flat = torch.cat(chunks).reshape(len(h), -1)  # (P, block*block)
        tiles, inverse = torch.unique(flat, dim=0, return_inverse=True)
        tile_id[h, i, j] = inverse
        tiles = tiles.reshape(-1, block, block)
    else:
        tiles = torch.ones(1, block, block, dtype=torch.bool)
    result = MaskTiles(tile_id, tiles)
    _remember(key, result, layout)
    return result


_CACHE: dict = {}


def _remember(key, value, layout) -> None:
    if len(_CACHE) > 512:
        _CACHE.clear()
    _CACHE[key] = (value, layout)  # the layout is kept alive with its entry, so its id() is not reused


@dataclass(frozen=True)
class RowPlan:
    """The kept blocks as per-row lists, rows sorted by how many blocks they keep (most first).

    A *row* is one (head, query block) pair, flattened as ``head * n_blocks + query_block``. Sorting lets the
    blocked implementation process, at step t, the prefix of rows that still have a t-th kept block, so
    work is proportional to the number of kept blocks even when rows differ a lot (global tokens).
    """

    order: torch.Tensor  # (R,) long: row ids, most kept blocks first
    kv_block: torch.Tensor  # (R, max_kept) long: flat key-block ids (head * n_blocks + key block) per sorted row
    tile: torch.Tensor  # (R, max_kept) long: index into ``tiles`` of that block's mask (the last tile: all allowed)
    tiles: torch.Tensor  # (P + 1, block, block) bool
    active: list  # active[t] = number of sorted rows that have a t-th kept block
    partial: list  # partial[t] = sorted rows (< active[t]) whose t-th block is partial and needs its mask
    n_heads: int
    n_blocks: int

    def masked(self, s: torch.Tensor, t: int, fill: float) -> torch.Tensor:
        """Scores or probabilities of step t, (B, R', block, block), with the disallowed pairs set to ``fill``.
        Only the partial tiles are touched: full blocks (most of a dense causal layout) need no mask."""
        rows = self.partial[t]
        if rows is None:
            return s
        if len(rows) == s.shape[1]:
            return s.masked_fill(~self.tiles[self.tile[: len(rows), t]], fill)
        s = s.clone()
        s[:, rows] = s[:, rows].masked_fill(~self.tiles[self.tile[rows, t]], fill)
        return s


def row_plan(layout: BlockLayout, pattern: Pattern, n_heads: int, device) -> RowPlan:
    key = ("plan", id(layout), n_heads, str(device))
    if key in _CACHE:
        return _CACHE[key][0]
    nb, hl = layout.n_blocks, layout.n_heads
    kept = layout.kept.expand(n_heads, nb, nb).reshape(n_heads * nb, nb)  # (R, nb)
    counts = kept.sum(1)  # (R,)
    order = torch.argsort(counts, descending=True, stable=True)  # (R,)
    counts_sorted = counts[order]
    max_kept = int(counts_sorted[0]) if len(counts_sorted) else 0
    # position of each kept key block in its row; unkept entries sort to the end
    cols = torch.arange(nb).expand(n_heads * nb, nb)
    key_sorted = torch.where(kept, cols, cols + nb).sort(dim=1).values[:, :max_kept] % nb  # (R, max_kept)
    head_of_row = torch.arange(n_heads).repeat_interleave(nb)  # (R,)
    flat = key_sorted + (head_of_row * nb).unsqueeze(1)  # (R, max_kept) flat key-block ids
    mt = mask_tiles(pattern, layout)
    tiles = torch.cat([mt.tiles, torch.ones(1, layout.block, layout.block, dtype=torch.bool)])  # last: full
    ids = mt.tile_id.expand(n_heads, nb, nb) if hl == 1 else mt.tile_id
    ids = ids.reshape(n_heads * nb, nb)  # (R, nb)
    tile = torch.gather(ids, 1, key_sorted)  # (R, max_kept)
    tile = torch.where(tile < 0, torch.full_like(tile, len(tiles) - 1), tile)
    active = [int((counts_sorted > t).sum()) for t in range(max_kept)]
    tile = tile[order]
    partial = []
    for t, n_act in enumerate(active):
        rows = (tile[:n_act, t] != len(tiles) - 1).nonzero().flatten()
        partial.append(None if len(rows) == 0 else
                       rows.to(device) if len(rows) < n_act else torch.arange(n_act, device=device))
    plan = RowPlan(order.to(device), flat[order].to(device), tile.to(device), tiles.to(device), active, partial,
                   n_heads, nb)
    _remember(key, plan, layout)
    return plan
