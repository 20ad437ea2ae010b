"""Our own flash / block-sparse attention in plain PyTorch (CPU and GPU).

The n x n score matrix is never formed. The sequence is cut into blocks; for every (head, query block)
*row* we visit only the key blocks the layout keeps, and keep a running max ``m`` and running sum ``l``
per query (the online softmax), so the output is exact. All rows advance together, one kept block per
step, which is what a GPU kernel with one program per query block does: at any time each row holds one
block x block tile of scores, O(n * block) in total.

Backward recomputes each tile from Q, K, V and the saved row log-sum-exp (``lse``) instead of storing the
probabilities: the memory kept for backward is q, k, v, out and lse, O(n * d).

With a dense causal layout this is flash attention; with a Child et al. or Longformer layout it is
block-sparse attention. Partial blocks (and the padding of the last block) apply the predicate
element-wise, from the mask tiles of ``layout.py``.

Names carry their layout: B batch, H heads, N length, D head dim, R rows (H x query blocks, in plan order),
K block edge (queries or keys in a tile), A the rows still active at a step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnlab.attention.backends.layout import DERIVED, block_layout, mask_tiles, query_lists
from attnlab.attention.patterns import Pattern


@dataclass(frozen=True)
class RowPlan:
    """The kept blocks as per-row lists, rows sorted by how many blocks they keep (most first).

    A *row* is one (head, query block) pair, flattened as ``head * n_blocks + query_block``. Sorting lets the
    loop process, at step t, the prefix of rows that still have a t-th kept block, so work is proportional
    to the number of kept blocks even when rows differ a lot (global tokens).
    """

    order_R: torch.Tensor  # (R,) row ids, most kept blocks first
    kv_block_RT: torch.Tensor  # (R, max_kept) flat key-block ids (head * n_blocks + key block) per sorted row
    tile_RT: torch.Tensor  # (R, max_kept) index into ``tiles`` of that block's mask (the last tile: all allowed)
    tiles: torch.Tensor  # (P + 1, K, K) bool
    active: list  # active[t] = number of sorted rows that have a t-th kept block
    partial: list  # partial[t] = sorted rows (< active[t]) whose t-th block needs its mask, or None
    n_blocks: int

    def masked(self, s_BAKK: torch.Tensor, t: int, fill: float) -> torch.Tensor:
        """Scores or probabilities of step t with the disallowed pairs set to ``fill``; only partial tiles are
        touched (full blocks, most of a dense causal layout, need no mask)."""
        rows = self.partial[t]
        if rows is None:
            return s_BAKK
        if len(rows) == s_BAKK.shape[1]:
            return s_BAKK.masked_fill(~self.tiles[self.tile_RT[: len(rows), t]], fill)
        s_BAKK = s_BAKK.clone()
        s_BAKK[:, rows] = s_BAKK[:, rows].masked_fill(~self.tiles[self.tile_RT[rows, t]], fill)
        return s_BAKK


def row_plan(pattern: Pattern, seq_len: int, block: int, n_heads: int, device) -> RowPlan:
    return DERIVED.get(("row_plan", pattern, seq_len, block, n_heads, str(device)),
                       lambda: _build_row_plan(pattern, seq_len, block, n_heads, device))


def _build_row_plan(pattern: Pattern, seq_len: int, block: int, n_heads: int, device) -> RowPlan:
    lists = query_lists(pattern, seq_len, block, n_heads)
    hl, nb, max_kept = lists.block_idx.shape
    expand = lambda x: x.expand(n_heads, *x.shape[1:]).reshape(n_heads * nb, *x.shape[2:])  # noqa: E731
    count_R = expand(lists.count)  # (R,)
    head_of_row = torch.arange(n_heads).repeat_interleave(nb)  # (R,)
    kv_block_RT = expand(lists.block_idx) + (head_of_row * nb).unsqueeze(1)  # (R, max_kept) flat ids
    tiles = mask_tiles(pattern, block_layout(pattern, seq_len, block, n_heads)).tiles
    tiles = torch.cat([tiles, torch.ones(1, block, block, dtype=torch.bool)])  # the last one: all allowed
    full_tile = len(tiles) - 1
    tile_RT = expand(lists.tile)
    tile_RT = torch.where(tile_RT < 0, torch.full_like(tile_RT, full_tile), tile_RT)
    order_R = torch.argsort(count_R, descending=True, stable=True)
    count_sorted = count_R[order_R]
    tile_RT, kv_block_RT = tile_RT[order_R], kv_block_RT[order_R]
    active = [int((count_sorted > t).sum()) for t in range(int(count_sorted[0]) if len(count_sorted) else 0)]
    partial = []
    for t, n_active in enumerate(active):
        rows = (tile_RT[:n_active, t] != full_tile).nonzero().flatten()
        partial.append(None if len(rows) == 0 else
                       rows.to(device) if len(rows) < n_active else torch.arange(n_active, device=device))
    return RowPlan(order_R.to(device), kv_block_RT.to(device), tile_RT.to(device), tiles.to(device), active,
                   partial, nb)


def _to_rows(x_BHND: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, H * n_blocks, K, D), zero-padding N up to a multiple of the block."""
    B, H, N, D = x_BHND.shape
    nb = -(-N // block)
    if nb * block != N:
        x_BHND = torch.nn.functional.pad(x_BHND, (0, 0, 0, nb * block - N))
    return x_BHND.reshape(B, H * nb, block, D)


def _from_rows(x_BRKD: torch.Tensor, plan: RowPlan, H: int, N: int) -> torch.Tensor:
    """Rows in plan order (B, R, K, ...) -> (B, H, N, ...) in sequence order."""
    out = torch.empty_like(x_BRKD)
    out[:, plan.order_R] = x_BRKD
    B, _, K = out.shape[:3]
    return out.reshape(B, H, plan.n_blocks * K, *out.shape[3:])[:, :, :N]


class BlockedAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_BHND, k_BHND, v_BHND, pattern: Pattern, block: int, scale: float):
        B, H, N, D = q_BHND.shape
        plan = row_plan(pattern, N, block, H, q_BHND.device)
        dtype = q_BHND.dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 accumulation for half inputs
        q_BRKD = _to_rows(q_BHND.to(acc), block)[:, plan.order_R]  # query tiles, rows in plan order
        k_BRKD, v_BRKD = _to_rows(k_BHND.to(acc), block), _to_rows(v_BHND.to(acc), block)  # key tiles, by flat id
        R = q_BRKD.shape[1]
        m_BRK = torch.full((B, R, block), -math.inf, device=q_BHND.device, dtype=acc)  # running max per query
        l_BRK = torch.zeros(B, R, block, device=q_BHND.device, dtype=acc)  # running sum of exp(s - m)
        o_BRKD = torch.zeros(B, R, block, D, device=q_BHND.device, dtype=acc)  # running sum of exp(s - m) v
        for t, A in enumerate(plan.active):
            kv_A = plan.kv_block_RT[:A, t]  # key block of each active row
            s_BAKK = q_BRKD[:, :A] @ k_BRKD[:, kv_A].transpose(-1, -2) * scale
            s_BAKK = plan.masked(s_BAKK, t, -math.inf)  # the predicate, element-wise, in partial blocks only
            m_old = m_BRK[:, :A]
            m_new = torch.maximum(m_old, s_BAKK.amax(-1))  # (B, A, K)
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # no -inf - -inf
            p_BAKK = torch.exp(s_BAKK - m_safe.unsqueeze(-1))
            alpha = torch.exp(m_old - m_safe)  # rescale of the old sums; 0 when m_old = -inf
            l_BRK[:, :A] = l_BRK[:, :A] * alpha + p_BAKK.sum(-1)
            o_BRKD[:, :A] = o_BRKD[:, :A] * alpha.unsqueeze(-1) + p_BAKK @ v_BRKD[:, kv_A]
            m_BRK[:, :A] = m_new
        empty = l_BRK == 0  # queries that see no key (padding rows)
        o_BRKD = o_BRKD / torch.where(empty, torch.ones_like(l_BRK), l_BRK).unsqueeze(-1)
        lse_BRK = torch.where(empty, torch.full_like(l_BRK, math.inf), m_BRK + torch.log(l_BRK))  # +inf: p = 0
        out_BHND = _from_rows(o_BRKD, plan, H, N)
        lse_BHN = _from_rows(lse_BRK, plan, H, N)
        ctx.save_for_backward(q_BHND, k_BHND, v_BHND, out_BHND, lse_BHN)
        ctx.pattern, ctx.block, ctx.scale = pattern, block, scale
        return out_BHND.to(dtype)

    @staticmethod
    def backward(ctx, dout_BHND):
        q_BHND, k_BHND, v_BHND, out_BHND, lse_BHN = ctx.saved_tensors
        pattern, block, scale = ctx.pattern, ctx.block, ctx.scale
        B, H, N, D = q_BHND.shape
        plan = row_plan(pattern, N, block, H, q_BHND.device)
        acc = out_BHND.dtype  # the forward's accumulation dtype
        rows = lambda x: _to_rows(x, block)[:, plan.order_R]  # noqa: E731  (B, R, K, ...) in plan order
        q_BRKD, do_BRKD, o_BRKD = rows(q_BHND.to(acc)), rows(dout_BHND.to(acc)), rows(out_BHND)
        lse_BRK = rows(lse_BHN.unsqueeze(-1)).squeeze(-1)
        delta_BRK = (do_BRKD * o_BRKD).sum(-1)  # rowsum(dO * O) = sum_j P_ij dP_ij
        k_BRKD, v_BRKD = _to_rows(k_BHND.to(acc), block), _to_rows(v_BHND.to(acc), block)
        dq_BRKD = torch.zeros_like(q_BRKD)
        dk_BRKD, dv_BRKD = torch.zeros_like(k_BRKD), torch.zeros_like(v_BRKD)
        for t, A in enumerate(plan.active):
            kv_A = plan.kv_block_RT[:A, t]
            k_t, v_t = k_BRKD[:, kv_A], v_BRKD[:, kv_A]  # (B, A, K, D)
            q_t, do_t = q_BRKD[:, :A], do_BRKD[:, :A]
            s_BAKK = q_t @ k_t.transpose(-1, -2) * scale  # recomputed
            p_BAKK = plan.masked(torch.exp(s_BAKK - lse_BRK[:, :A].unsqueeze(-1)), t, 0.0)
            dv_BRKD.index_add_(1, kv_A, p_BAKK.transpose(-1, -2) @ do_t)  # dV_j += P^T dO
            dp_BAKK = do_t @ v_t.transpose(-1, -2)
            ds_BAKK = p_BAKK * (dp_BAKK - delta_BRK[:, :A].unsqueeze(-1)) * scale  # d(scores before scaling)
            dq_BRKD[:, :A] += ds_BAKK @ k_t
            dk_BRKD.index_add_(1, kv_A, ds_BAKK.transpose(-1, -2) @ q_t)
        dq_BHND = _from_rows(dq_BRKD, plan, H, N)
        unrow = lambda x: x.reshape(B, H, plan.n_blocks * block, D)[:, :, :N]  # noqa: E731  key tiles are not reordered
        return dq_BHND.to(q_BHND.dtype), unrow(dk_BRKD).to(k_BHND.dtype), unrow(dv_BRKD).to(v_BHND.dtype), None, None, None


def blocked_attention(q, k, v, pattern: Pattern, block: int = 64) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D), exactly softmax(q k^T / sqrt(D) masked by pattern) v."""
    return BlockedAttentionFn.apply(q, k, v, pattern, block, 1.0 / math.sqrt(q.shape[-1]))
