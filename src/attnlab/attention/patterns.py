"""Pattern primitives: which key each query may see, and the combinators that build attention types from them.

A pattern is one predicate ``mask(b, h, q_idx, kv_idx) -> bool`` evaluated on broadcastable integer
tensors (the same calling convention as FlexAttention's ``mask_mod``). Patterns compose with ``&`` and ``|``.
The same predicate drives the dense reference, the block layouts of the efficient backends
(``backends/layout.py``), FlexAttention's block mask, the Triton kernel's mask tiles and the pictures.

Attention types (``types/``) compose these primitives into their own predicate; this module knows no type.

Predicates use only element-wise integer tensor ops (no Python branching on values, no captured tensors)
so that they run on any device and under ``torch.vmap`` inside FlexAttention. None depends on the batch
index ``b``: the layout is shared by the whole batch. ``q_idx`` is the query position i, ``kv_idx`` the key
position j, both 0-based in the same sequence.

Each primitive also says where its keys can lie (a ``Cover``: a band of offsets, an own block, shared columns,
global rows), and ``&`` / ``|`` combine covers; the banded backend turns that shape into batched products and
checks it against the predicate.

A pattern's ``name`` describes it completely (every parameter is in it): two patterns with the same name
and ``per_head`` are the same predicate, which is what lets everything derived from a pattern be cached
by name (``backends/layout.py``).
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Positions:
    """A set of positions that does not depend on the length: the first k, listed ones, and/or the last c of
    every block of l (``every`` holds (l, c) pairs)."""

    first: int = 0
    listed: tuple = ()
    every: tuple = ()

    def __or__(self, other: "Positions") -> "Positions":
        return Positions(max(self.first, other.first), tuple(sorted(set(self.listed) | set(other.listed))),
                         tuple(sorted(set(self.every) | set(other.every))))

    def at(self, n: int) -> torch.Tensor:
        """The positions below n, sorted, as a long tensor."""
        keep = torch.arange(n) < self.first  # (n,)
        for p in self.listed:
            if 0 <= p < n:
                keep[p] = True
        for l, c in self.every:
            keep |= torch.arange(n) % l >= l - c
        return keep.nonzero().flatten()


@dataclass(frozen=True)
class Cover:
    """Where a pattern's allowed keys can lie, in shapes a backend can batch: a superset of the pattern (the
    predicate stays the truth; a backend applies it inside the cover).

    band (lo, hi): query i may see keys i+lo .. i+hi. block l: query i may see its own block of l positions.
    columns: keys any query may see (global keys, block summaries). rows: queries that may see any key
    (global queries). ``None`` in place of a Cover means "anywhere" (causal, every l-th key, random blocks).
    """

    band: tuple[int, int] | None = None
    block: int = 0
    columns: Positions = Positions()
    rows: Positions = Positions()

    def __or__(self, other: "Cover") -> "Cover | None":
        if self.block and other.block and self.block != other.block:
            return None  # two block sizes: no common shape
        bands = [b for b in (self.band, other.band) if b is not None]
        band = (min(b[0] for b in bands), max(b[1] for b in bands)) if bands else None
        return Cover(band, self.block or other.block, self.columns | other.columns, self.rows | other.rows)


def union_cover(a: Cover | None, b: Cover | None) -> Cover | None:
    return None if a is None or b is None else a | b


@dataclass(frozen=True)
class Pattern:
    """A named mask predicate.

    per_head: the predicate depends on the head index (layouts are then built per head).
    fused_as: 'causal' or 'all' when the pattern is exactly what a fused kernel computes without any mask
    (``is_causal=True``, or no mask at all); None for every other pattern.
    """

    name: str
    fn: MaskFn = field(compare=False, repr=False)
    per_head: bool = False
    fused_as: str | None = None
    cover: Cover | None = field(default=None, compare=False, repr=False)  # follows from the name too

    def __call__(self, b, h, q_idx, kv_idx) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: "Pattern") -> "Pattern":
        a, c = self, other
        if a.fused_as == "all":  # everything & p is p
            return c
        return Pattern(f"({a.name} & {c.name})", lambda b, h, q, k: a(b, h, q, k) & c(b, h, q, k),
                       a.per_head or c.per_head, cover=a.cover if a.cover is not None else c.cover)

    def __or__(self, other: "Pattern") -> "Pattern":
        a, c = self, other
        return Pattern(f"({a.name} | {c.name})", lambda b, h, q, k: a(b, h, q, k) | c(b, h, q, k),
                       a.per_head or c.per_head, cover=union_cover(a.cover, c.cover))

    def dense(self, n_q: int, n_k: int | None = None, n_heads: int = 1, device=None) -> torch.Tensor:
        """The explicit boolean mask, shape (n_heads, n_q, n_k). O(n^2): for references and pictures."""
        n_k = n_q if n_k is None else n_k
        h = torch.arange(n_heads, device=device).view(-1, 1, 1)  # (H, 1, 1)
        q = torch.arange(n_q, device=device).view(1, -1, 1)  # (1, n_q, 1)
        k = torch.arange(n_k, device=device).view(1, 1, -1)  # (1, 1, n_k)
        b = torch.zeros((), dtype=torch.long, device=device)
        return self(b, h, q, k).expand(n_heads, n_q, n_k).clone()  # (H, n_q, n_k)


# --- the two bases ---------------------------------------------------------------------------------------

def causal() -> Pattern:
    """Query i sees keys j <= i (a language model must not read the future)."""
    return Pattern("causal", lambda b, h, q, k: k <= q, fused_as="causal")


def everything() -> Pattern:
    """Every query sees every key (encoder use)."""
    return Pattern("bidirectional", lambda b, h, q, k: (k >= 0) & (q >= 0), fused_as="all")


def base(is_causal: bool) -> Pattern:
    return causal() if is_causal else everything()


# --- local and global ---------------------------------------------------------------------------------

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
    suffix = f"_dil{dilation}" if dilation > 1 else ""
    if is_causal:
        def fn(b, h, q, k):
            d = q - k
            return (d >= 0) & (d < window * dilation) & (d % dilation == 0)
        return Pattern(f"window{window}{suffix}", fn, cover=Cover(band=(-(window - 1) * dilation, 0)))
    half = window // 2

    def fn(b, h, q, k):
        d = q - k
        return (d.abs() <= half * dilation) & (d % dilation == 0)
    return Pattern(f"bi_window{window}{suffix}", fn, cover=Cover(band=(-half * dilation, half * dilation)))


def global_tokens(positions: int | Sequence[int]) -> Pattern:
    """Global attention for a few tokens: the first k positions (an int) or an explicit list.

    A global query attends to every key; every query attends to a global key. Combine with ``base(causal)``
    (by ``&``) so that causality still holds. Positions past the sequence simply never occur.
    """
    if isinstance(positions, int):
        first = max(0, positions)
        return Pattern(f"global{first}", lambda b, h, q, k: (q < first) | (k < first),
                       cover=Cover(columns=Positions(first=first), rows=Positions(first=first)))
    pos = sorted(set(int(p) for p in positions))
    if not pos:
        return Pattern("global[]", lambda b, h, q, k: (q < 0) & (k < 0))

    def is_global(x):  # one comparison per global position: element-wise, no lookup table to move between devices
        return functools.reduce(operator.or_, (x == p for p in pos))
    return Pattern(f"global{pos}", lambda b, h, q, k: is_global(q) | is_global(k),
                   cover=Cover(columns=Positions(listed=tuple(pos)), rows=Positions(listed=tuple(pos))))


# --- Child et al. (2019) components ------------------------------------------------------------------

def band(width: int) -> Pattern:
    """The local band |i-j| < l (strided sparse attention's first component)."""
    return Pattern(f"band{width}", lambda b, h, q, k: (q - k).abs() < width, cover=Cover(band=(1 - width, width - 1)))


def every_lth(stride: int) -> Pattern:
    """Every l-th key, (i-j) mod l == 0, j == i included (strided sparse attention's second component)."""
    return Pattern(f"stride{stride}", lambda b, h, q, k: (q - k) % stride == 0)


def same_block(block: int) -> Pattern:
    """The query's own block of l positions, floor(j/l) == floor(i/l) (fixed sparse attention's first component)."""
    return Pattern(f"block{block}", lambda b, h, q, k: (q // block) == (k // block), cover=Cover(block=block))


def block_summaries(block: int, summary: int) -> Pattern:
    """The last c positions of every block of l, j mod l >= l-c (fixed sparse attention's second component).

    The diagonal j == i is added so that no query has an empty row when this component is used alone in
    a head (split heads and alternating layers)."""
    return Pattern(f"summary{block}c{summary}", lambda b, h, q, k: ((k % block) >= block - summary) | (q == k),
                   cover=Cover(band=(0, 0), columns=Positions(every=((block, summary),))))


# --- combinators beyond & and | ------------------------------------------------------------------------

def split_heads(even: Pattern, odd: Pattern) -> Pattern:
    """Even heads use ``even``, odd heads ``odd`` (one pattern per head group)."""
    def fn(b, h, q, k):
        return torch.where(h % 2 == 0, even(b, h, q, k), odd(b, h, q, k))
    return Pattern(f"split({even.name}, {odd.name})", fn, per_head=True, cover=union_cover(even.cover, odd.cover))


# --- data-dependent: documents ---------------------------------------------------------------------------

def document_ids(tokens: torch.Tensor, end_token: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """tokens (B, T) -> document ids (B, T): the number of ``end_token`` before each position (plus ``start``, (B,),
    the ends already seen before these tokens). The end token belongs to the document it ends, so the first
    token of the next document sees only itself and later tokens of its own document."""
    ends = (tokens == end_token).long()  # (B, T)
    ids = ends.cumsum(1) - ends  # (B, T) exclusive count
    return ids if start is None else ids + start.view(-1, 1)


def same_document(documents: torch.Tensor) -> Pattern:
    """Query and key lie in the same document, ``documents[b, q] == documents[b, kv]`` (documents: (B, N) ids).

    The one pattern that depends on the batch index and on the data: it captures ``documents``, so it is
    never cached by name. ``pattern & same_document(ids)`` is what document masking computes; the dense
    backend, the KV cache and the analysis evaluate it like this, and the efficient backends apply the same
    comparison inside each block they visit (their block layouts stay the data-independent ``pattern``'s)."""
    return Pattern("same_document", lambda b, h, q, k: documents[b, q] == documents[b, k])


def with_documents(pattern: Pattern, documents: torch.Tensor | None) -> Pattern:
    """``pattern & same_document(documents)``, or ``pattern`` itself when there are no documents."""
    return pattern if documents is None else pattern & same_document(documents)
