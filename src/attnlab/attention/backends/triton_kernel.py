"""Our block-sparse flash-attention kernel in Triton: one kernel for flash, sparse and Longformer.

The kernel visits, for each (batch, head, query block), only the key blocks its layout keeps (a per-row
list built from the mask predicate, see ``backends/layout.py``). Full blocks need no mask; a *partial* block loads a
precomputed BLOCK x BLOCK tile of the predicate (evaluated once per shape from the same predicate), so any
pattern the predicates express runs exactly. Forward: online softmax in base 2 (running max ``m`` and sum
``l``), output and the row log-sum-exp saved. Backward: FlashAttention-2 style, recomputing each tile from
Q, K, V and the saved log-sum-exp: one kernel per key block for dK, dV (walking the transposed layout) and
one per query block for dQ, so no atomics are needed.

Runs on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (slowly; that is how CI tests it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from attnlab.attention.backends.layout import DERIVED, block_layout, key_lists, mask_tiles, query_lists
from attnlab.attention.patterns import Pattern
from attnlab.errors import ConfigError

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class KernelLayout:
    """The layout as the kernel reads it: the shared kept-block lists (``layout.kept_lists``) as int32 on the
    kernel's device. kv_*: for each query block, the key blocks it sees (forward, dQ); q_*: for each key
    block, the query blocks that see it (dK/dV). *_tile: mask tile index, -1 for a full block. tiles:
    (P, BLOCK, BLOCK) int8 masks of the partial blocks."""

    kv_idx: torch.Tensor
    kv_cnt: torch.Tensor
    kv_tile: torch.Tensor
    q_idx: torch.Tensor
    q_cnt: torch.Tensor
    q_tile: torch.Tensor
    tiles: torch.Tensor
    n_layout_heads: int
    block: int


def kernel_layout(pattern: Pattern, seq_len: int, block: int, n_heads: int, device) -> KernelLayout:
    return DERIVED.get(("triton_layout", pattern, seq_len, block, n_heads, str(device)),
                       lambda: _build_kernel_layout(pattern, seq_len, block, n_heads, device))


def _build_kernel_layout(pattern: Pattern, seq_len: int, block: int, n_heads: int, device) -> KernelLayout:
    lay = block_layout(pattern, seq_len, block, n_heads)
    tiles = mask_tiles(pattern, lay).tiles.to(torch.int8)  # shared with the blocked backend
    by_query, by_key = query_lists(pattern, seq_len, block, n_heads), key_lists(pattern, seq_len, block, n_heads)
    lists = (by_query.block_idx, by_query.count, by_query.tile, by_key.block_idx, by_key.count, by_key.tile)
    return KernelLayout(*(t.int().contiguous().to(device) for t in lists), tiles.contiguous().to(device),
                        lay.n_heads, block)


@triton.jit
def _rows(ptr, b, h, sb, sh, sn, offs, offs_d, N, D):
    """Pointers and bounds of a (rows x head dim) tile of a (B, H, N, D) tensor: rows past N and columns past D
    (head dims padded to a power of two) are masked."""
    return (ptr + b * sb + h * sh + offs[:, None] * sn + offs_d[None, :],
            (offs[:, None] < N) & (offs_d[None, :] < D))


@triton.jit
def _load_rows(ptr, b, h, sb, sh, sn, offs, offs_d, N, D):
    p, m = _rows(ptr, b, h, sb, sh, sn, offs, offs_d, N, D)
    return tl.load(p, mask=m, other=0.0)


@triton.jit
def _store_rows(ptr, x, b, h, sb, sh, sn, offs, offs_d, N, D):
    p, m = _rows(ptr, b, h, sb, sh, sn, offs, offs_d, N, D)
    tl.store(p, x.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _program(H, HL, NB, BLOCK: tl.constexpr):
    """This program's (batch x head) index, batch, head, its row in the layout lists (layout head hl: 0 when
    the pattern is the same in every head) and the positions of its block."""
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    row = (h % HL) * NB + pid_blk
    return pid_bh, b, h, row, pid_blk * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _kept_block(IDX, TILE, row, MAXT, t, BLOCK: tl.constexpr):
    """The t-th kept block of a layout row: its positions and its mask tile (-1: a full block)."""
    blk = tl.load(IDX + row * MAXT + t)
    return blk * BLOCK + tl.arange(0, BLOCK), tl.load(TILE + row * MAXT + t)


@triton.jit
def _tile_allowed(TILES, tile, BLOCK: tl.constexpr):
    """A partial block's predicate, (query, key) as stored, BLOCK x BLOCK int8."""
    offs_t = tl.arange(0, BLOCK)
    return tl.load(TILES + tile * BLOCK * BLOCK + offs_t[:, None] * BLOCK + offs_t[None, :])


@triton.jit
def _documents(DOC, b, offs, N, HAS_DOC: tl.constexpr):
    """The document ids (B, N) int32 of a block's positions; positions past N are document -1."""
    if HAS_DOC:
        return tl.load(DOC + b * N + offs, mask=offs < N, other=-1)
    return offs * 0


@triton.jit
def _load_query_side(Q, DO, LSE, DELTA, pid_bh, b, h, sqb, sqh, sqn, sdb, sdh, sdn, offs_m, offs_d, N, D):
    """What the backward pass needs of a query block: q, dO, and the row log-sum-exp and delta = rowsum(dO * O)."""
    q = _load_rows(Q, b, h, sqb, sqh, sqn, offs_m, offs_d, N, D)
    do = _load_rows(DO, b, h, sdb, sdh, sdn, offs_m, offs_d, N, D)
    lse = tl.load(LSE + pid_bh * N + offs_m, mask=offs_m < N, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * N + offs_m, mask=offs_m < N, other=0.0)
    return q, do, lse, delta


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, KV_IDX, KV_CNT, KV_TILE, TILES, DOC,
                sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                H, N, D, HL, NB, MAXK, qk_scale,
                BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr, HAS_DOC: tl.constexpr):
    pid_bh, b, h, row, offs_m = _program(H, HL, NB, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, b, h, sqb, sqh, sqn, offs_m, offs_d, N, D)
    doc_q = _documents(DOC, b, offs_m, N, HAS_DOC)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    cnt = tl.load(KV_CNT + row)
    for t in range(0, cnt):
        offs_n, tile = _kept_block(KV_IDX, KV_TILE, row, MAXK, t, BLOCK)
        k = _load_rows(K, b, h, skb, skh, skn, offs_n, offs_d, N, D)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # (BLOCK, BLOCK) scores in log2 units
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))
        if tile >= 0:  # partial block: the predicate, element-wise
            s = tl.where(_tile_allowed(TILES, tile, BLOCK) != 0, s, float("-inf"))
        if HAS_DOC:  # document masking: every visited tile, element-wise (the layout is the pattern's)
            s = tl.where(doc_q[:, None] == _documents(DOC, b, offs_n, N, HAS_DOC)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, b, h, svb, svh, svn, offs_n, offs_d, N, D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))  # log2 units; +inf: p = 0
    _store_rows(O, out, b, h, sob, soh, son, offs_m, offs_d, N, D)
    tl.store(LSE + pid_bh * N + offs_m, lse, mask=offs_m < N)


@triton.jit
def _backward_tile(q, k, v, do, lse, delta, offs_n, N, tile, TILES, doc_q, doc_k, qk_scale, sm_scale,
                   BLOCK: tl.constexpr, PREC: tl.constexpr, HAS_DOC: tl.constexpr):
    """The body both backward passes share: recompute one tile of probabilities P = exp2(S - lse) from the
    saved log-sum-exp (masked by the sequence end and, for a partial block, by its predicate tile, stored as
    (query, key)), and dS = P * (dP - delta) with dP = dO V^T. Returns (P, dS), each (BLOCK_M, BLOCK_N)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # (BLOCK_M, BLOCK_N) scores in log2 units
    p = tl.exp2(s - lse[:, None])
    p = tl.where(offs_n[None, :] < N, p, 0.0)
    if tile >= 0:
        p = tl.where(_tile_allowed(TILES, tile, BLOCK) != 0, p, 0.0)
    if HAS_DOC:
        p = tl.where(doc_q[:, None] == doc_k[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None]) * sm_scale
    return p, ds


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, Q_IDX, Q_CNT, Q_TILE, TILES, DOC,
                     sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                     H, N, D, HL, NB, MAXQ, qk_scale, sm_scale,
                     BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr, HAS_DOC: tl.constexpr):
    pid_bh, b, h, row, offs_n = _program(H, HL, NB, BLOCK)
    doc_k = _documents(DOC, b, offs_n, N, HAS_DOC)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K, b, h, skb, skh, skn, offs_n, offs_d, N, D)
    v = _load_rows(V, b, h, svb, svh, svn, offs_n, offs_d, N, D)
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    cnt = tl.load(Q_CNT + row)
    for t in range(0, cnt):
        offs_m, tile = _kept_block(Q_IDX, Q_TILE, row, MAXQ, t, BLOCK)
        q, do, lse, delta = _load_query_side(Q, DO, LSE, DELTA, pid_bh, b, h, sqb, sqh, sqn, sdb, sdh, sdn,
                                             offs_m, offs_d, N, D)
        p, ds = _backward_tile(q, k, v, do, lse, delta, offs_n, N, tile, TILES, _documents(DOC, b, offs_m, N, HAS_DOC),
                               doc_k, qk_scale, sm_scale, BLOCK, PREC, HAS_DOC)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    _store_rows(DK, dk, b, h, skb, skh, skn, offs_n, offs_d, N, D)
    _store_rows(DV, dv, b, h, svb, svh, svn, offs_n, offs_d, N, D)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, KV_IDX, KV_CNT, KV_TILE, TILES, DOC,
                   sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                   H, N, D, HL, NB, MAXK, qk_scale, sm_scale,
                   BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr, HAS_DOC: tl.constexpr):
    pid_bh, b, h, row, offs_m = _program(H, HL, NB, BLOCK)
    doc_q = _documents(DOC, b, offs_m, N, HAS_DOC)
    offs_d = tl.arange(0, BLOCK_D)
    q, do, lse, delta = _load_query_side(Q, DO, LSE, DELTA, pid_bh, b, h, sqb, sqh, sqn, sdb, sdh, sdn,
                                         offs_m, offs_d, N, D)
    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    cnt = tl.load(KV_CNT + row)
    for t in range(0, cnt):
        offs_n, tile = _kept_block(KV_IDX, KV_TILE, row, MAXK, t, BLOCK)
        k = _load_rows(K, b, h, skb, skh, skn, offs_n, offs_d, N, D)
        v = _load_rows(V, b, h, svb, svh, svn, offs_n, offs_d, N, D)
        p, ds = _backward_tile(q, k, v, do, lse, delta, offs_n, N, tile, TILES, doc_q,
                               _documents(DOC, b, offs_n, N, HAS_DOC), qk_scale, sm_scale, BLOCK, PREC, HAS_DOC)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    _store_rows(DQ, dq, b, h, sqb, sqh, sqn, offs_m, offs_d, N, D)


def _precision(q: torch.Tensor) -> str:
    # fp32 inputs: exact IEEE products (tf32 would cost ~1e-3 relative error); half inputs ignore this
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _new_buffer(like: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    """Output buffers are uninitialised; tests replace this with NaN-filled buffers to prove every element
    is written."""
    return torch.empty(shape or like.shape, device=like.device, dtype=dtype or like.dtype)


def _launch_cfg(block: int, d: int) -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"num_warps": 8 if block * max(d, 64) >= 128 * 128 else 4, "num_stages": 2}


class TritonAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern: Pattern, block: int, documents: torch.Tensor | None = None):
        B, H, N, D = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        doc = documents.to(device=q.device, dtype=torch.int32).contiguous() if documents is not None else \
            torch.zeros(1, dtype=torch.int32, device=q.device)  # unread without documents
        kl = kernel_layout(pattern, N, block, H, q.device)
        out = _new_buffer(q)
        lse = _new_buffer(q, (B * H, N), torch.float32)
        sm_scale = 1.0 / math.sqrt(D)
        BLOCK_D = max(16, triton.next_power_of_2(D))
        nb = -(-N // block)
        grid = (nb, B * H)
        _fwd_kernel[grid](q, k, v, out, lse, kl.kv_idx, kl.kv_cnt, kl.kv_tile, kl.tiles, doc,
                          *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                          H, N, D, kl.n_layout_heads, nb, kl.kv_idx.shape[-1], sm_scale * LOG2E,
                          BLOCK=block, BLOCK_D=BLOCK_D, PREC=_precision(q), HAS_DOC=documents is not None,
                          **_launch_cfg(block, D))
        ctx.save_for_backward(q, k, v, out, lse, doc)
        ctx.kl, ctx.block, ctx.sm_scale, ctx.has_doc = kl, block, sm_scale, documents is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, doc = ctx.saved_tensors
        kl, block, sm_scale = ctx.kl, ctx.block, ctx.sm_scale
        B, H, N, D = q.shape
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).reshape(B * H, N)  # rowsum(dO * O)
        dq, dk, dv = _new_buffer(q), _new_buffer(k), _new_buffer(v)
        BLOCK_D = max(16, triton.next_power_of_2(D))
        nb = -(-N // block)
        common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3], H, N, D, kl.n_layout_heads, nb)
        _bwd_dkdv_kernel[(nb, B * H)](q, k, v, dout, lse, delta, dk, dv, kl.q_idx, kl.q_cnt, kl.q_tile, kl.tiles,
                                      doc, *common, kl.q_idx.shape[-1], sm_scale * LOG2E, sm_scale,
                                      BLOCK=block, BLOCK_D=BLOCK_D, PREC=_precision(q), HAS_DOC=ctx.has_doc,
                                      **_launch_cfg(block, D))
        _bwd_dq_kernel[(nb, B * H)](q, k, v, dout, lse, delta, dq, kl.kv_idx, kl.kv_cnt, kl.kv_tile, kl.tiles,
                                    doc, *common, kl.kv_idx.shape[-1], sm_scale * LOG2E, sm_scale,
                                    BLOCK=block, BLOCK_D=BLOCK_D, PREC=_precision(q), HAS_DOC=ctx.has_doc,
                                    **_launch_cfg(block, D))
        return dq, dk, dv, None, None, None


def triton_attention(q, k, v, pattern: Pattern, block: int = 64, documents: torch.Tensor | None = None,
                     score_mod=None) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D); block must be a power of two >= 16 (tensor-core tiles). Documents
    (B, N): the same comparison inside every visited tile. A score modification it cannot add (no such input)."""
    if block < 16 or block & (block - 1):
        raise ConfigError(f"attention.block_size={block}: the triton backend needs a power of two >= 16")
    if score_mod is not None:
        raise ValueError(f"the triton backend cannot add the score modification {score_mod.name}")
    return TritonAttentionFn.apply(q, k, v, pattern, block, documents)
