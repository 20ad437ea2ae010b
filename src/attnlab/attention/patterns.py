"""Attention patterns: which key each query may see.

A pattern is one predicate ``mask(b, h, q_idx, kv_idx) -> bool`` evaluated on broadcastable integer
tensors (the same calling convention as FlexAttention's ``mask_mod``). Patterns compose with ``&`` and ``|``.
The same predicate drives

* the dense reference (``Pattern.dense``), used by ``full`` and by the tests as the oracle,
* the block layout of the blocked / Triton / Flex implementations (``attnlab.attention.layout``),
* the picture of the pattern (``attnlab.attention.pictures``).

Predicates use only element-wise tensor ops (no Python branching on values) so that they also run under
``torch.vmap`` inside FlexAttention. None of the patterns here depends on the batch index ``b``: the
layout is shared by the whole batch.

Index conventions: ``q_idx`` is the query position i, ``kv_idx`` the key position j, both 0-based
positions in the same sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Pattern:
    """A named mask predicate. ``per_head`` says whether it depends on the head index."""

    fn: MaskFn
    name: str
    per_head: bool = False

    def __call__(self, b, h, q_idx, kv_idx) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: "Pattern") -> "Pattern":
        a, c = self, other
        return Pattern(lambda b, h, q, k: a(b, h, q, k) & c(b, h, q, k), f"({a.name} & {c.name})",
                       a.per_head or c.per_head)

    def __or__(self, other: "Pattern") -> "Pattern":
        a, c = self, other
        return Pattern(lambda b, h, q, k: a(b, h, q, k) | c(b, h, q, k), f"({a.name} | {c.name})",
                       a.per_head or c.per_head)

    def dense(self, n_q: int, n_k: int | None = None, n_heads: int = 1, device=None) -> torch.Tensor:
        """The explicit boolean mask, shape (n_heads, n_q, n_k). O(n^2): for references and pictures."""
        n_k = n_q if n_k is None else n_k
        h = torch.arange(n_heads, device=device).view(-1, 1, 1)  # (H, 1, 1)
        q = torch.arange(n_q, device=device).view(1, -1, 1)  # (1, n_q, 1)
        k = torch.arange(n_k, device=device).view(1, 1, -1)  # (1, 1, n_k)
        b = torch.zeros((), dtype=torch.long, device=device)
        out = self(b, h, q, k)
        return out.expand(n_heads, n_q, n_k).clone()  # (H, n_q, n_k)


# --- base patterns -------------------------------------------------------------------------------

def causal() -> Pattern:
    """Query i sees keys j <= i (a language model must not read the future)."""
    return Pattern(lambda b, h, q, k: k <= q, "causal")


def bidirectional() -> Pattern:
    """Every query sees every key (encoder use)."""
    return Pattern(lambda b, h, q, k: (k >= 0) & (q >= 0), "bidirectional")


def base(is_causal: bool) -> Pattern:
    return causal() if is_causal else bidirectional()


def sliding_window(window: int, is_causal: bool = True, dilation: int = 1) -> Pattern:
    """Local attention.

    Causal: query i sees the ``window`` keys i-(window-1)*dilation, ..., i-dilation, i, i.e. with dilation 1
    exactly i-w < j <= i (w keys including itself).
    Bidirectional: |i-j| <= w//2 (with dilation: |i-j| <= (w//2)*dilation and (i-j) divisible by dilation).
    """
    if window <= 0:
        raise ValueError(f"sliding window must be > 0, got window={window}")
    if dilation <= 0:
        raise ValueError(f"dilation must be >= 1, got dilation={dilation}")
    if is_causal:
        def fn(b, h, q, k):
            d = q - k
            return (d >= 0) & (d < window * dilation) & (d % dilation == 0)
        name = f"window{window}" + (f"_dil{dilation}" if dilation > 1 else "")
    else:
        half = window // 2

        def fn(b, h, q, k):
            d = q - k
            return (d.abs() <= half * dilation) & (d % dilation == 0)
        name = f"bi_window{window}" + (f"_dil{dilation}" if dilation > 1 else "")
    return Pattern(fn, name)


def global_tokens(positions: int | Sequence[int], seq_len: int) -> Pattern:
    """Global attention for a few tokens, given as the first k positions (an int) or an explicit list.

    A global query attends to every key; every query attends to a global key. Combine with ``base(causal)``
    (by ``&``) so that causality still holds: in causal mode a global token sees all *earlier* keys.
    Positions at or past ``seq_len`` (a sequence shorter than the context) simply do not occur; the
    attention type checks the configured positions against the context before training.
    """
    if isinstance(positions, int):
        k_first = max(0, positions)
        return Pattern(lambda b, h, q, k: (q < k_first) | (k < k_first), f"global{k_first}")
    pos = sorted(set(int(p) for p in positions if 0 <= int(p) < seq_len))
    table_cpu = torch.zeros(max(seq_len, 1), dtype=torch.bool)
    table_cpu[pos] = True
    tables: dict = {}

    def fn(b, h, q, k):
        dev = q.device
        if dev not in tables:
            tables[dev] = table_cpu.to(dev)
        t = tables[dev]  # (seq_len,) bool lookup: is position p global?
        n = t.numel()
        return (t[q.clamp(0, n - 1)] & (q < n)) | (t[k.clamp(0, n - 1)] & (k < n))
    return Pattern(fn, f"global{pos}")


def strided_local(stride: int) -> Pattern:
    """Child et al. (2019) strided, first component: the local band |i-j| < l."""
    return Pattern(lambda b, h, q, k: (q - k).abs() < stride, f"band{stride}")


def strided_stride(stride: int) -> Pattern:
    """Child et al. (2019) strided, second component: every l-th key, (i-j) mod l == 0 (includes j == i)."""
    return Pattern(lambda b, h, q, k: (q - k) % stride == 0, f"stride{stride}")


def fixed_block(block: int) -> Pattern:
    """Child et al. (2019) fixed, first component: the query's own block, floor(j/l) == floor(i/l)."""
    return Pattern(lambda b, h, q, k: (q // block) == (k // block), f"block{block}")


def fixed_summary(block: int, summary: int) -> Pattern:
    """Child et al. (2019) fixed, second component: the last c positions of every block, j mod l >= l-c.

    The diagonal j == i is added so that no query is left with an empty row when this component is used
    alone in a head (the split and alternate head layouts)."""
    return Pattern(lambda b, h, q, k: ((k % block) >= block - summary) | (q == k), f"summary{block}c{summary}")


def split_heads(first: Pattern, second: Pattern) -> Pattern:
    """Even heads use ``first``, odd heads ``second`` (the paper's 'split across heads' option)."""
    def fn(b, h, q, k):
        return torch.where(h % 2 == 0, first(b, h, q, k), second(b, h, q, k))
    return Pattern(fn, f"split({first.name}, {second.name})", per_head=True)


def child_sparse(kind: str, block: int, summary: int, is_causal: bool, heads: str, layer: int) -> Pattern:
    """The Sparse Transformer patterns of Child et al. (2019).

    kind: ``strided`` (band of l + every l-th key) or ``fixed`` (own block of l + last c of each block).
    heads: how the two components combine: ``union`` (every head sees both), ``split`` (even heads the
    first, odd heads the second), ``alternate`` (even layers the first, odd layers the second).
    """
    if kind == "strided":
        if block < 1:
            raise ValueError(f"strided sparse attention needs stride l >= 1, got {block}")
        a, c = strided_local(block), strided_stride(block)
    elif kind == "fixed":
        if block < 1:
            raise ValueError(f"fixed sparse attention needs block length l >= 1, got {block}")
        if not 1 <= summary <= block:
            raise ValueError(f"fixed sparse attention needs 1 <= summary c <= block l, got c={summary}, l={block}")
        a, c = fixed_block(block), fixed_summary(block, summary)
    else:
        raise ValueError(f"unknown sparse pattern {kind!r}; valid: ['fixed', 'strided']")
    if heads == "union":
        p = a | c
    elif heads == "split":
        p = split_heads(a, c)
    elif heads == "alternate":
        p = a if layer % 2 == 0 else c
    else:
        raise ValueError(f"unknown head layout {heads!r}; valid: ['alternate', 'split', 'union']")
    return base(is_causal) & p


def longformer(window: int, n_global: int | Sequence[int], seq_len: int, is_causal: bool,
               dilation: int = 1) -> Pattern:
    """Longformer (Beltagy et al. 2020): sliding window for every token plus global attention for a few."""
    p = sliding_window(window, is_causal, dilation)
    has_global = (isinstance(n_global, int) and n_global > 0) or (not isinstance(n_global, int) and len(n_global) > 0)
    if has_global:
        p = p | global_tokens(n_global, seq_len)
    return base(is_causal) & p
