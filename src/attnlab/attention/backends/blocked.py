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
from attnlab.attention.score_mods import ScoreMod


STEP_KEYS = 512  # keys a row takes per step at most (G blocks of K): larger products, fewer Python steps...
STEP_BLOCKS = 4  # ...and at most 4 blocks, so the gathered keys stay within 4x the queries' size (memory)


@dataclass(frozen=True)
class RowPlan:
    """The kept blocks as per-row lists, rows sorted by how many blocks they keep (most first), visited G at a time.

    A *row* is one (head, query block) pair, flattened as ``head * n_blocks + query_block``. At step t every row
    still active takes its kept blocks t*G .. t*G+G-1 as one K x (G*K) tile of scores; a row with fewer left
    pads with key block 0 under an all-masked tile. Sorting lets step t process the prefix of rows that still
    have blocks, so work is proportional to the number of kept blocks even when rows differ a lot (globals).
    """

    order_R: torch.Tensor  # (R,) row ids, most kept blocks first
    kv_block_RT: torch.Tensor  # (R, steps * G) flat key-block ids (head * n_blocks + key block) per sorted row
    active: list  # active[t] = number of sorted rows that have blocks at step t
    partial: list  # partial[t] = (rows (P,), slots (P,), tiles (P, K, K) bool) of the masked tiles of step t, or None
    n_blocks: int
    group: int  # G

    def step_blocks(self, t: int) -> torch.Tensor:
        """(A, G) key blocks of the active rows at step t."""
        return self.kv_block_RT[: self.active[t], t * self.group:(t + 1) * self.group]

    def masked(self, s_BAKL: torch.Tensor, t: int, fill: float) -> torch.Tensor:
        """Scores or probabilities of step t, (B, A, K, G*K), with the disallowed pairs set to ``fill``, in place;
        only the partial tiles are touched (full blocks, most of a dense causal layout, need no mask)."""
        if self.partial[t] is None:
            return s_BAKL
        rows, slots, tiles = self.partial[t]
        B, A, K = s_BAKL.shape[:3]
        s5 = s_BAKL.view(B, A, K, self.group, K)  # (B, A, K, G, K)
        s5[:, rows, :, slots, :] = s5[:, rows, :, slots, :].masked_fill(~tiles.unsqueeze(1), fill)  # (P, B, K, K)
        return s_BAKL


def row_plan(pattern: Pattern, seq_len: int, block: int, n_heads: int, device) -> RowPlan:
    return DERIVED.get(("row_plan", pattern, seq_len, block, n_heads, str(device)),
                       lambda: _build_row_plan(pattern, seq_len, block, n_heads, device))


def _build_row_plan(pattern: Pattern, seq_len: int, block: int, n_heads: int, device) -> RowPlan:
    lists = query_lists(pattern, seq_len, block, n_heads)
    hl, nb, max_kept = lists.block_idx.shape
    G = max(1, min(STEP_KEYS // block, STEP_BLOCKS, max_kept))
    steps = -(-max_kept // G)
    expand = lambda x: x.expand(n_heads, *x.shape[1:]).reshape(n_heads * nb, *x.shape[2:])  # noqa: E731
    count_R = expand(lists.count)  # (R,)
    head_of_row = torch.arange(n_heads).repeat_interleave(nb)  # (R,)
    kv_block_RT = expand(lists.block_idx) + (head_of_row * nb).unsqueeze(1)  # (R, max_kept) flat ids
    tiles = mask_tiles(pattern, block_layout(pattern, seq_len, block, n_heads)).tiles
    none_tile, full_tile = len(tiles), len(tiles) + 1
    tiles = torch.cat([tiles, torch.zeros(1, block, block, dtype=torch.bool),  # padding slots: nothing allowed
                       torch.ones(1, block, block, dtype=torch.bool)])  # full blocks: everything allowed
    tile_RT = expand(lists.tile)
    tile_RT = torch.where(tile_RT < 0, torch.full_like(tile_RT, full_tile), tile_RT)
    past_count = torch.arange(max_kept) >= count_R.unsqueeze(1)  # (R, max_kept) slots after a row's last block
    tile_RT = tile_RT.masked_fill(past_count, none_tile)
    pad = steps * G - max_kept
    kv_block_RT = torch.nn.functional.pad(kv_block_RT.masked_fill(past_count, 0), (0, pad))
    tile_RT = torch.nn.functional.pad(tile_RT, (0, pad), value=none_tile)
    order_R = torch.argsort(count_R, descending=True, stable=True)
    count_sorted = count_R[order_R]
    tile_RT, kv_block_RT = tile_RT[order_R], kv_block_RT[order_R]
    active = [int((count_sorted > t * G).sum()) for t in range(steps)]
    partial = []
    for t, n_active in enumerate(active):
        step_tiles = tile_RT[:n_active, t * G:(t + 1) * G]  # (A, G)
        rows, slots = (step_tiles != full_tile).nonzero(as_tuple=True)
        partial.append(None if len(rows) == 0 else
                       (rows.to(device), slots.to(device), tiles[step_tiles[rows, slots]].to(device)))
    return RowPlan(order_R.to(device), kv_block_RT.to(device), active, partial, nb, G)


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


class Workspace:
    """Buffers reused by the steps of one call. Rows are sorted, so the first step is the widest: each buffer is
    allocated once and later steps take a prefix. Fewer fresh allocations: less page faulting and memory traffic."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self._buffers[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)

    def gather(self, name: str, x_BRKD: torch.Tensor, blocks: torch.Tensor, A: int) -> torch.Tensor:
        """Blocks ``blocks`` (A*G,) of x, G per active row side by side: (B, A, G*K, D)."""
        B, _, K, D = x_BRKD.shape
        out = self.take(name, (B, len(blocks), K, D), x_BRKD)
        return torch.index_select(x_BRKD, 1, blocks, out=out).view(B, A, -1, D)


def as_blocks(x_BALD: torch.Tensor, block: int) -> torch.Tensor:
    """(B, A, G*K, D) -> (B, A*G, K, D): one entry per visited key block, for index_add_ by block id."""
    B, A, L, D = x_BALD.shape
    return x_BALD.reshape(B, A * (L // block), block, D)


@dataclass(frozen=True)
class StepExtras:
    """What a step adds beyond the pattern's layout: the document check (``same_document`` inside every visited
    tile, the layout itself staying the data-independent pattern's) and a score modification (ALiBi), both
    computed for the step's tiles from positions, never as an n x n tensor."""

    documents_BnK: torch.Tensor | None  # (B, nb, K) document id of every (padded) position; padding -1
    score_mod: ScoreMod | None

    @staticmethod
    def of(documents: torch.Tensor | None, score_mod: ScoreMod | None, block: int, N: int) -> "StepExtras | None":
        if documents is None and score_mod is None:
            return None
        docs = None
        if documents is not None:
            nb = -(-N // block)
            docs = torch.nn.functional.pad(documents, (0, nb * block - N), value=-1).view(documents.shape[0], nb, block)
        return StepExtras(docs, score_mod)

    def add_scores(self, plan: RowPlan, s_BAKL: torch.Tensor, t: int) -> None:
        """Scores of step t (B, A, K, G*K) + the score modification, in place."""
        if self.score_mod is None:
            return
        A, block, G = s_BAKL.shape[1], s_BAKL.shape[2], plan.group
        rows = plan.order_R[:A]  # (A,) flat rows: head * nb + query block
        ar = torch.arange(block, device=s_BAKL.device)
        q_pos = (rows % plan.n_blocks).view(A, 1, 1) * block + ar.view(1, -1, 1)  # (A, K, 1)
        k_pos = ((plan.step_blocks(t) % plan.n_blocks).unsqueeze(-1) * block + ar).view(A, 1, G * block)  # (A, 1, G*K)
        zero = torch.zeros((), dtype=torch.long, device=s_BAKL.device)
        s_BAKL += self.score_mod(zero, (rows // plan.n_blocks).view(A, 1, 1), q_pos, k_pos).to(s_BAKL.dtype)

    def mask_documents(self, plan: RowPlan, s_BAKL: torch.Tensor, t: int, fill: float) -> None:
        """Scores or probabilities of step t (B, A, K, G*K): pairs across documents set to ``fill``, in place."""
        if self.documents_BnK is None:
            return
        B, A, block, G = *s_BAKL.shape[:3], plan.group
        doc_q = self.documents_BnK[:, plan.order_R[:A] % plan.n_blocks]  # (B, A, K)
        doc_k = self.documents_BnK[:, plan.step_blocks(t) % plan.n_blocks].view(B, A, G * block)  # (B, A, G*K)
        s_BAKL.masked_fill_(doc_q.unsqueeze(-1) != doc_k.unsqueeze(-2), fill)  # (B, A, K, G*K)


class BlockedAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_BHND, k_BHND, v_BHND, pattern: Pattern, block: int, scale: float,
                documents: torch.Tensor | None = None, score_mod: ScoreMod | None = None):
        B, H, N, D = q_BHND.shape
        plan = row_plan(pattern, N, block, H, q_BHND.device)
        extras = StepExtras.of(documents, score_mod, block, N)
        dtype = q_BHND.dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 accumulation for half inputs
        q_BRKD = _to_rows(q_BHND.to(acc), block)[:, plan.order_R]  # query tiles, rows in plan order
        k_BRKD, v_BRKD = _to_rows(k_BHND.to(acc), block), _to_rows(v_BHND.to(acc), block)  # key tiles, by flat id
        R = q_BRKD.shape[1]
        m_BRK = torch.full((B, R, block), -math.inf, device=q_BHND.device, dtype=acc)  # running max per query
        l_BRK = torch.zeros(B, R, block, device=q_BHND.device, dtype=acc)  # running sum of exp(s - m)
        o_BRKD = torch.zeros(B, R, block, D, device=q_BHND.device, dtype=acc)  # running sum of exp(s - m) v
        q_BRKD = q_BRKD * scale
        work = Workspace()
        for t, A in enumerate(plan.active):
            blocks = plan.step_blocks(t).flatten()  # (A*G,) the G key blocks of each active row, side by side
            k_BALD = work.gather("k", k_BRKD, blocks, A)  # (B, A, G*K, D)
            s_shape = (B, A, block, k_BALD.shape[2])  # (B, A, K, G*K)
            s_BAKL = torch.matmul(q_BRKD[:, :A], k_BALD.transpose(-1, -2), out=work.take("s", s_shape, q_BRKD))
            if extras is not None:
                extras.add_scores(plan, s_BAKL, t)
            plan.masked(s_BAKL, t, -math.inf)  # the predicate, in place, in partial tiles only
            if extras is not None:
                extras.mask_documents(plan, s_BAKL, t, -math.inf)
            m_old = m_BRK[:, :A]
            m_new = torch.maximum(m_old, s_BAKL.amax(-1))  # (B, A, K)
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # no -inf - -inf
            p_BAKL = s_BAKL.sub_(m_safe.unsqueeze(-1)).exp_()  # in place: the scores become probabilities
            alpha = torch.exp(m_old - m_safe)  # rescale of the old sums; 0 when m_old = -inf
            l_BRK[:, :A] = l_BRK[:, :A] * alpha + p_BAKL.sum(-1)
            o_BRKD[:, :A] = o_BRKD[:, :A] * alpha.unsqueeze(-1) + p_BAKL @ work.gather("v", v_BRKD, blocks, A)
            m_BRK[:, :A] = m_new
        empty = l_BRK == 0  # queries that see no key (padding rows)
        o_BRKD = o_BRKD / torch.where(empty, torch.ones_like(l_BRK), l_BRK).unsqueeze(-1)
        lse_BRK = torch.where(empty, torch.full_like(l_BRK, math.inf), m_BRK + torch.log(l_BRK))  # +inf: p = 0
        out_BHND = _from_rows(o_BRKD, plan, H, N)
        lse_BHN = _from_rows(lse_BRK, plan, H, N)
        ctx.save_for_backward(q_BHND, k_BHND, v_BHND, out_BHND, lse_BHN)
        ctx.pattern, ctx.block, ctx.scale, ctx.extras = pattern, block, scale, extras
        return out_BHND.to(dtype)

    @staticmethod
    def backward(ctx, dout_BHND):
        q_BHND, k_BHND, v_BHND, out_BHND, lse_BHN = ctx.saved_tensors
        pattern, block, scale, extras = ctx.pattern, ctx.block, ctx.scale, ctx.extras
        B, H, N, D = q_BHND.shape
        plan = row_plan(pattern, N, block, H, q_BHND.device)
        acc = out_BHND.dtype  # the forward's accumulation dtype
        rows = lambda x: _to_rows(x, block)[:, plan.order_R]  # noqa: E731  (B, R, K, ...) in plan order
        q_BRKD, do_BRKD, o_BRKD = rows(q_BHND.to(acc) * scale), rows(dout_BHND.to(acc)), rows(out_BHND)
        lse_BRK = rows(lse_BHN.unsqueeze(-1)).squeeze(-1)
        delta_BRK = (do_BRKD * o_BRKD).sum(-1)  # rowsum(dO * O) = sum_j P_ij dP_ij
        k_BRKD, v_BRKD = _to_rows(k_BHND.to(acc), block), _to_rows(v_BHND.to(acc), block)
        dq_BRKD = torch.zeros_like(q_BRKD)
        dk_BRKD, dv_BRKD = torch.zeros_like(k_BRKD), torch.zeros_like(v_BRKD)
        work = Workspace()
        for t, A in enumerate(plan.active):
            blocks = plan.step_blocks(t).flatten()
            k_BALD, v_BALD = work.gather("k", k_BRKD, blocks, A), work.gather("v", v_BRKD, blocks, A)  # (B, A, G*K, D)
            q_t, do_t = q_BRKD[:, :A], do_BRKD[:, :A]
            shape = (B, A, block, k_BALD.shape[2])
            s_BAKL = torch.matmul(q_t, k_BALD.transpose(-1, -2), out=work.take("s", shape, q_t))  # recomputed
            if extras is not None:
                extras.add_scores(plan, s_BAKL, t)
            p_BAKL = plan.masked(s_BAKL.sub_(lse_BRK[:, :A].unsqueeze(-1)).exp_(), t, 0.0)  # in place
            if extras is not None:
                extras.mask_documents(plan, p_BAKL, t, 0.0)
            pdo = torch.matmul(p_BAKL.transpose(-1, -2), do_t, out=work.take("kd", k_BALD.shape, q_t))
            dv_BRKD.index_add_(1, blocks, as_blocks(pdo, block))  # dV_j += P^T dO
            dp_BAKL = torch.matmul(do_t, v_BALD.transpose(-1, -2), out=work.take("dp", shape, q_t))
            ds_BAKL = dp_BAKL.sub_(delta_BRK[:, :A].unsqueeze(-1)).mul_(p_BAKL)  # d(scaled scores), in place
            dq_BRKD[:, :A] += ds_BAKL @ k_BALD  # the scale once, at the end
            dsq = torch.matmul(ds_BAKL.transpose(-1, -2), q_t, out=work.take("kd", k_BALD.shape, q_t))
            dk_BRKD.index_add_(1, blocks, as_blocks(dsq, block))
        dq_BHND = _from_rows(dq_BRKD * scale, plan, H, N)
        unrow = lambda x: x.reshape(B, H, plan.n_blocks * block, D)[:, :, :N]  # noqa: E731  key tiles are not reordered
        return dq_BHND.to(q_BHND.dtype), unrow(dk_BRKD).to(k_BHND.dtype), unrow(dv_BRKD).to(v_BHND.dtype), None, None, None, None, None


def blocked_attention(q, k, v, pattern: Pattern, block: int = 64, documents: torch.Tensor | None = None,
                      score_mod: ScoreMod | None = None) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D), exactly softmax(q k^T / sqrt(D) + score_mod, masked by pattern and
    documents) v."""
    return BlockedAttentionFn.apply(q, k, v, pattern, block, 1.0 / math.sqrt(q.shape[-1]), documents, score_mod)
