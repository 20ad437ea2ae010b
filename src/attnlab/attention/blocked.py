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
element-wise (from mask tiles evaluated once per shape, see ``layout.mask_tiles``).
"""
from __future__ import annotations

import math

import torch

from attnlab.attention.layout import block_layout, row_plan
from attnlab.attention.patterns import Pattern


def _to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, H * n_blocks, block, D), zero-padding N up to a multiple of block."""
    B, H, N, D = x.shape
    nb = -(-N // block)
    if nb * block != N:
        x = torch.nn.functional.pad(x, (0, 0, 0, nb * block - N))
    return x.reshape(B, H * nb, block, D)


class BlockedAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern: Pattern, block: int, scale: float):
        B, H, N, D = q.shape
        layout = block_layout(pattern, N, block, H)
        plan = row_plan(layout, pattern, H, q.device)
        dtype = q.dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 accumulation for half inputs
        qf, kf, vf = (t.to(acc) for t in (q, k, v))
        Qs = _to_blocks(qf, block)[:, plan.order]  # (B, R, block, D), rows in plan order
        Kb, Vb = _to_blocks(kf, block), _to_blocks(vf, block)  # (B, H*nb, block, D)
        R = Qs.shape[1]
        m = torch.full((B, R, block), -math.inf, device=q.device, dtype=acc)  # running max per query
        l = torch.zeros(B, R, block, device=q.device, dtype=acc)  # running sum of exp(s - m)
        acc_o = torch.zeros(B, R, block, D, device=q.device, dtype=acc)  # running sum of exp(s - m) v
        for t, n_act in enumerate(plan.active):
            kv = plan.kv_block[:n_act, t]  # (R',) key block of each active row
            s = Qs[:, :n_act] @ Kb[:, kv].transpose(-1, -2) * scale  # (B, R', block, block)
            s = plan.masked(s, t, -math.inf)  # the predicate, element-wise, in partial blocks only
            m_old = m[:, :n_act]
            m_new = torch.maximum(m_old, s.amax(-1))  # (B, R', block)
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # no -inf - -inf
            p = torch.exp(s - m_safe.unsqueeze(-1))  # (B, R', block, block)
            alpha = torch.exp(m_old - m_safe)  # rescale of the old sums; 0 when m_old = -inf
            l[:, :n_act] = l[:, :n_act] * alpha + p.sum(-1)
            acc_o[:, :n_act] = acc_o[:, :n_act] * alpha.unsqueeze(-1) + p @ Vb[:, kv]
            m[:, :n_act] = m_new
        empty = l == 0  # queries that see no key (only padding rows, for the patterns shipped here)
        out_s = acc_o / torch.where(empty, torch.ones_like(l), l).unsqueeze(-1)  # (B, R, block, D)
        lse_s = torch.where(empty, torch.full_like(l, math.inf), m + torch.log(l))  # +inf -> p = 0 in backward
        out = torch.empty_like(out_s)
        out[:, plan.order] = out_s
        lse = torch.empty_like(lse_s)
        lse[:, plan.order] = lse_s
        nb = plan.n_blocks
        out = out.reshape(B, H, nb * block, D)[:, :, :N]  # (B, H, N, D)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.block, ctx.scale = pattern, block, scale
        return out.to(dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        pattern, block, scale = ctx.pattern, ctx.block, ctx.scale
        B, H, N, D = q.shape
        plan = row_plan(block_layout(pattern, N, block, H), pattern, H, q.device)
        acc = out.dtype  # the forward's accumulation dtype
        Qs = _to_blocks(q.to(acc), block)[:, plan.order]  # (B, R, block, D)
        dOs = _to_blocks(dout.to(acc), block)[:, plan.order]
        Os = _to_blocks(out, block)[:, plan.order]
        lse_s = lse[:, plan.order]  # (B, R, block)
        delta = (dOs * Os).sum(-1)  # (B, R, block): rowsum(dO * O) = sum_j P_ij dP_ij
        Kb, Vb = _to_blocks(k.to(acc), block), _to_blocks(v.to(acc), block)  # (B, H*nb, block, D)
        dQs = torch.zeros_like(Qs)
        dK, dV = torch.zeros_like(Kb), torch.zeros_like(Vb)
        for t, n_act in enumerate(plan.active):
            kv = plan.kv_block[:n_act, t]
            Kt, Vt = Kb[:, kv], Vb[:, kv]  # (B, R', block, D)
            Qa, dOa = Qs[:, :n_act], dOs[:, :n_act]
            s = Qa @ Kt.transpose(-1, -2) * scale  # (B, R', block, block), recomputed
            p = plan.masked(torch.exp(s - lse_s[:, :n_act].unsqueeze(-1)), t, 0.0)  # probabilities
            dV.index_add_(1, kv, p.transpose(-1, -2) @ dOa)  # dV_j += P^T dO
            dp = dOa @ Vt.transpose(-1, -2)  # (B, R', block, block)
            ds = p * (dp - delta[:, :n_act].unsqueeze(-1)) * scale  # d(scores before scaling)
            dQs[:, :n_act] += ds @ Kt
            dK.index_add_(1, kv, ds.transpose(-1, -2) @ Qa)
        nb = plan.n_blocks
        dQ = torch.empty_like(dQs)
        dQ[:, plan.order] = dQs
        unblock = lambda x: x.reshape(B, H, nb * block, D)[:, :, :N]  # noqa: E731
        return (unblock(dQ).to(q.dtype), unblock(dK).to(k.dtype), unblock(dV).to(v.dtype), None, None, None)


def blocked_attention(q, k, v, pattern: Pattern, block: int = 64) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D), exactly softmax(q k^T / sqrt(D) masked by pattern) v."""
    return BlockedAttentionFn.apply(q, k, v, pattern, block, 1.0 / math.sqrt(q.shape[-1]))
