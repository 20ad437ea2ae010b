"""Banded attention: the pattern's shape (band, own block, shared columns) turned into a few large matrix products.

For patterns whose ``Cover`` (``patterns.py``) says where their keys lie -- Longformer's window plus global
tokens, the fixed Sparse Transformer's own block plus block summaries -- every query block of K queries needs
the same *shape* of keys: a contiguous band of L_b keys starting at a fixed offset from the block, plus a
short list of column keys (global keys, summaries) shared by a group of blocks. So one batched product per
group computes all the scores a block row needs, with no per-block loop and no gather of the band:

    band keys   k.unfold(N, L_b, K)          (B, H, nb, D, L_b)   a strided view, one window per query block
    scores      q_blocks @ band keys         (B, H, nb, K, L_b)   plus q @ k[columns]^T  (B, H, nb, K, C)
    softmax     over L_b + C keys at once    the row is complete: no online softmax, no rescaling

The predicate is applied element-wise inside the cover from masks built once per shape, which also drop a
column key that already lies in the band (each pair is counted once). Queries that may see every key
(global queries of a bidirectional or listed Longformer) are computed densely, one (g x N) product.
Building the plan checks that the cover holds exactly the pattern's allowed pairs, so a wrong cover fails
loudly instead of silently dropping keys.

Memory: autograd keeps the probabilities inside the cover, O(n (L_b + C)) -- O(n (w + g)) for Longformer,
O(n sqrt(n)) for fixed sparse with l ~ sqrt(n) -- never O(n^2). Names carry their layout: B batch, H heads,
N length, D head dim, nb query blocks, K queries per block, A blocks in a group, L_b band keys, C columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attnlab.attention.backends.layout import DERIVED, block_layout, layout_heads
from attnlab.attention.patterns import Pattern
from attnlab.attention.score_mods import ScoreMod

MAX_GROUPS = 8  # row groups with their own column lists: trims causal columns to ~1/16 waste at most


def handles(pattern: Pattern) -> bool:
    c = pattern.cover
    return c is not None and (c.band is not None or c.block > 0)


class Bias:
    """A mask as a score bias, 0 where allowed and -inf elsewhere, made once per dtype: adding it costs one pass
    like masked_fill, and nothing in backward."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self._by_dtype: dict = {}

    def __call__(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._by_dtype:  # kept for every later pass: never made as an inference tensor, which a
            with torch.inference_mode(False):  # training step after an evaluation in one process could not use
                self._by_dtype[dtype] = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device
                                                    ).masked_fill_(~self.mask, -math.inf)
        return self._by_dtype[dtype]


@dataclass(frozen=True)
class Group:
    first: int  # query blocks [first, last) of this group
    last: int
    columns: torch.Tensor  # (C,) key positions beyond the band that some query of the group sees
    bias: Bias  # mask (1, Hl, A, K, L_b + C): the predicate inside band + columns
    query_pos: torch.Tensor  # (A, K, 1) the group's query positions
    key_pos: torch.Tensor  # (A, 1, L_b + C) the key position of each band and column slot


@dataclass(frozen=True)
class BandPlan:
    K: int  # queries per block
    nb: int  # query blocks
    lo: int  # first band key of a block, relative to the block's first query (<= 0)
    band_len: int  # L_b
    groups: tuple
    dense_rows: torch.Tensor | None  # (g,) queries computed densely (they see keys outside the cover)
    dense_bias: Bias | None  # mask (1, Hl, g, N): the predicate on those rows
    score_biases: dict = field(default_factory=dict, compare=False)  # (group, score_mod, H) -> its bias, made once


def band_plan(pattern: Pattern, N: int, block: int, n_heads: int, device) -> BandPlan:
    heads = layout_heads(pattern, n_heads)
    return DERIVED.get(("band_plan", pattern, N, block, heads, str(device)),
                       lambda: _build_band_plan(pattern, N, block, heads, device))


def _build_band_plan(pattern: Pattern, N: int, block: int, heads: int, device) -> BandPlan:
    cover = pattern.cover
    lo, hi = cover.band if cover.band is not None else (0, 0)
    K = cover.block or block  # a block-diagonal pattern sets the query block: its own block is then a band
    lo, hi = min(lo, 0), max(hi, 0)  # the block's own queries as keys are always in: [start + lo, end + hi]
    nb = -(-N // K)
    band_len = K + hi - lo
    b = torch.zeros((), dtype=torch.long)
    h = torch.arange(heads).view(-1, 1, 1, 1)  # (Hl, 1, 1, 1)
    all_columns = cover.columns.at(N)  # (S,)
    n_groups = 1 if len(all_columns) == 0 else min(nb, MAX_GROUPS, max(1, -(-len(all_columns) // K)))
    bounds = [round(i * nb / n_groups) for i in range(n_groups + 1)]
    groups, covered_pairs, covered_at = [], 0, {}
    for first, last in zip(bounds[:-1], bounds[1:]):
        A = last - first
        blocks = torch.arange(first, last).view(1, -1, 1, 1)  # (1, A, 1, 1)
        q = blocks * K + torch.arange(K).view(1, 1, -1, 1)  # (1, A, K, 1) query positions
        p = blocks * K + lo + torch.arange(band_len).view(1, 1, 1, -1)  # (1, A, 1, L_b) band key positions
        band_mask = pattern(b, h, q, p) & (p >= 0) & (p < N) & (q < N)  # (Hl, A, K, L_b)
        c = all_columns.view(1, 1, 1, -1)  # (1, 1, 1, S)
        in_band = (c >= blocks * K + lo) & (c < blocks * K + lo + band_len)  # counted in the band already
        col_mask = pattern(b, h, q, c) & ~in_band & (q < N)  # (Hl, A, K, S)
        used = col_mask.flatten(0, 2).any(0)  # (S,) the columns some query of this group sees
        col_mask = col_mask[..., used]
        mask = torch.cat([band_mask, col_mask], -1).expand(heads, A, K, -1)  # (Hl, A, K, L_b + C)
        covered_pairs += int(mask.sum())
        for a in range(A):  # per-query counts, for the dense-row check below (few rows are candidates)
            covered_at[first + a] = mask[:, a].sum(-1)  # (Hl, K)
        none = ~mask.any(-1, keepdim=True)  # padding queries: let them see themselves (finite, never used)
        self_key = (p == q).expand(heads, A, K, band_len)
        mask = mask | (none & torch.cat([self_key, torch.zeros_like(col_mask)], -1))
        key_pos = torch.cat([p.view(A, 1, band_len), all_columns[used].view(1, 1, -1).expand(A, 1, -1)], -1)
        groups.append(Group(first, last, all_columns[used].to(device), Bias(mask.unsqueeze(0).to(device)),
                            q.view(A, K, 1).to(device), key_pos.to(device)))

    candidates = cover.rows.at(N)  # global queries: the only ones that may see keys outside band + columns
    dense_rows = dense_bias = None
    dense_pairs = 0
    if len(candidates):
        k = torch.arange(N).view(1, 1, -1)
        allowed = pattern(b, h.view(-1, 1, 1), candidates.view(1, -1, 1), k).expand(heads, -1, N)  # (Hl, g, N)
        covered = torch.stack([covered_at[int(r) // K][:, int(r) % K] for r in candidates], 1)  # (Hl, g)
        outside = (allowed.sum(-1) != covered).any(0)  # (g,)
        if outside.any():
            dense_rows, dense_mask = candidates[outside], allowed[:, outside]
            covered_pairs -= int(covered[:, outside].sum())
            dense_pairs = int(dense_mask.sum())
            dense_rows, dense_bias = dense_rows.to(device), Bias(dense_mask.unsqueeze(0).to(device))
    expected = block_layout(pattern, N, 128, heads).allowed_pairs
    if covered_pairs + dense_pairs != expected:
        raise RuntimeError(f"banded attention: the cover of pattern {pattern.name} holds "
                           f"{covered_pairs + dense_pairs} allowed pairs of {expected} at length {N}; "
                           f"its Cover (patterns.py) is wrong")
    return BandPlan(K, nb, lo, band_len, tuple(groups), dense_rows, dense_bias)


def score_bias(plan: BandPlan, g: int, score_mod: ScoreMod, H: int, dtype) -> torch.Tensor:
    """Group g's score modification over its band and column slots, (1, H, A, K, L_b + C), made once per shape."""
    key = (g, score_mod, H)
    if key not in plan.score_biases:  # kept with the plan; never an inference tensor (see Bias)
        group = plan.groups[g]
        with torch.inference_mode(False):
            h = torch.arange(H, device=group.key_pos.device).view(-1, 1, 1, 1)  # (H, 1, 1, 1)
            zero = torch.zeros((), dtype=torch.long, device=h.device)
            plan.score_biases[key] = score_mod(zero, h, group.query_pos.unsqueeze(0),
                                               group.key_pos.unsqueeze(0)).unsqueeze(0)  # (1, H, A, K, L_b + C)
    return plan.score_biases[key].to(dtype)


def banded_attention(q, k, v, pattern: Pattern, block: int = 64, documents: torch.Tensor | None = None,
                     score_mod: ScoreMod | None = None) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D), exactly softmax(q k^T / sqrt(D) + score_mod, masked by pattern and
    documents) v. Documents: the same band and columns, each slot's document id compared with the query's."""
    B, H, N, D = q.shape
    plan = band_plan(pattern, N, block, H, q.device)
    dtype = q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 arithmetic for half inputs
    K, nb, L = plan.K, plan.nb, plan.band_len
    q, k, v = q.to(acc) * (1.0 / math.sqrt(D)), k.to(acc), v.to(acc)
    q_blocks = F.pad(q, (0, 0, 0, nb * K - N)).view(B, H, nb, K, D)  # (B, H, nb, K, D)
    back = max(0, (nb - 1) * K + plan.lo + L - N)  # padding after the last key so every window is whole
    k_pad = F.pad(k, (0, 0, -plan.lo, back))  # (B, H, N + pad, D): window a starts at key a*K + lo
    v_pad = F.pad(v, (0, 0, -plan.lo, back))
    k_band = k_pad.unfold(2, L, K)[:, :, :nb]  # (B, H, nb, D, L_b) a view: no copy of the overlapping windows
    v_band = v_pad.unfold(2, L, K)[:, :, :nb].transpose(-1, -2)  # (B, H, nb, L_b, D)
    if documents is not None:  # padding is document -1 on both sides: a padding query keeps its own (finite) key
        doc_q = F.pad(documents, (0, nb * K - N), value=-1).view(B, nb, K)  # (B, nb, K)
        doc_band = F.pad(documents, (-plan.lo, back), value=-1).unfold(1, L, K)[:, :nb]  # (B, nb, L_b)
    outs = []
    for i, g in enumerate(plan.groups):
        A, C = g.last - g.first, len(g.columns)
        keys = k_band[:, :, g.first:g.last].transpose(-1, -2)  # (B, H, A, L_b, D)
        values = v_band[:, :, g.first:g.last]  # (B, H, A, L_b, D)
        if C:  # the group's column keys, the same for each of its blocks
            keys = torch.cat([keys, k[:, :, g.columns].unsqueeze(2).expand(B, H, A, C, D)], 3)  # (B, H, A, L_b + C, D)
            values = torch.cat([values, v[:, :, g.columns].unsqueeze(2).expand(B, H, A, C, D)], 3)
        s = q_blocks[:, :, g.first:g.last] @ keys.transpose(-1, -2) + g.bias(acc)  # (B, H, A, K, L_b + C)
        if score_mod is not None:
            s = s + score_bias(plan, i, score_mod, H, acc)
        if documents is not None:
            doc_k = torch.cat([doc_band[:, g.first:g.last], documents[:, g.columns].unsqueeze(1).expand(B, A, C)], 2)
            s = s.masked_fill((doc_q[:, g.first:g.last].unsqueeze(-1) != doc_k.unsqueeze(-2)).unsqueeze(1), -math.inf)
        p = torch.softmax(s, -1)  # the whole row at once; bias 0 / -inf: the predicate
        outs.append(p @ values)  # (B, H, A, K, D)
    out = torch.cat(outs, 2).reshape(B, H, nb * K, D)[:, :, :N]  # (B, H, N, D)
    if plan.dense_rows is not None:  # global queries: every key they may see, one (g x N) product
        rows = plan.dense_rows
        s = q[:, :, rows] @ k.transpose(-1, -2) + plan.dense_bias(acc)  # (B, H, g, N)
        if score_mod is not None:
            zero = torch.zeros((), dtype=torch.long, device=q.device)
            s = s + score_mod(zero, torch.arange(H, device=q.device).view(-1, 1, 1), rows.view(1, -1, 1),
                              torch.arange(N, device=q.device).view(1, 1, -1)).to(acc)
        if documents is not None:
            s = s.masked_fill((documents[:, rows].unsqueeze(-1) != documents.unsqueeze(1)).unsqueeze(1), -math.inf)
        o = torch.softmax(s, -1) @ v  # (B, H, g, D)
        out = out.index_copy(2, rows, o)
    return out.to(dtype)
