"""bigbird: sliding window + global tokens + r random key blocks per query block (Zaheer et al. 2020).

The sequence is cut into blocks of ``random_block`` positions. Each query block qb also sees ``random_blocks``
whole key blocks drawn at random, as in the paper: only among the blocks that add keys, i.e. outside the
query block's window and outside the global blocks (in causal mode also only earlier blocks), exactly r of
them where that many exist (all of them where fewer do), a different draw for every query block, head and
layer (the reference implementation draws per head too), reproducible from ``seed``.

The draw is Floyd's algorithm for a uniform r-subset written in element-wise integer arithmetic (a hash of
(seed, layer, head, query block, draw) in place of a random number generator), so the predicate runs
unchanged in every backend, under FlexAttention and in the KV cache. In causal mode the candidates of a
query block depend only on that block, so the pattern does not depend on the sequence length.
Time and memory O(n (w + g + r * block)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, base, global_tokens, sliding_window
from attnlab.errors import ConfigError

_MASK31 = 0x7FFFFFFF  # hashes stay below 2^31, so a product with a 27-bit constant never overflows int64


def _hash(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer mix (xor-shift-multiply), element-wise on any integer tensor."""
    x = x & _MASK31
    for _ in range(2):
        x = ((x >> 15) ^ x) * 0x45D9F3B & _MASK31
    return (x >> 13) ^ x


def random_block_choice(candidate: torch.Tensor, m: torch.Tensor, r: int, key: torch.Tensor) -> torch.Tensor:
    """Whether candidate c (0 <= c < m) is among r drawn without replacement from range(m), uniformly (Floyd's
    algorithm); every candidate where m <= r. ``key`` seeds the draw (one per query block, head, layer).
    All arguments broadcast; the result has their broadcast shape."""
    chosen: list[torch.Tensor] = []
    for t in range(r):
        j = m - r + t  # Floyd: for j in m-r .. m-1, pick u in [0, j]; if u was taken, take j
        u = _hash(key * 31 + t) % (j + 1).clamp(min=1)
        taken = torch.zeros_like(u, dtype=torch.bool)
        for s in chosen:
            taken = taken | (s == u)
        chosen.append(torch.where(taken, j, u))
    hit = torch.zeros_like(candidate, dtype=torch.bool)
    for s in chosen:
        hit = hit | (candidate == s)
    valid = (candidate >= 0) & (candidate < m)
    return valid & torch.where(m <= r, torch.ones_like(hit), hit)


@dataclass
class BigBirdAttention(AttentionType):
    window: int = 32  # w: local keys per token (causal: i-w < j <= i); the paper uses 3 blocks
    global_tokens: int = 2  # first g positions are global (the paper's ITC variant)
    random_blocks: int = 2  # r: random key blocks per query block; the paper uses 3
    random_block: int = 16  # edge of the random blocks (and a good block_size)
    seed: int = 0  # which random blocks; fixed per run so training and evaluation see one pattern
    block_size: int = 16
    name = "bigbird"

    def candidate_blocks(self, qb: torch.Tensor, n_blocks: int | None = None):
        """For query blocks qb: (the first range of candidate key blocks [a0, a1), the second [b0, b1)) with the
        window's and the global tokens' blocks left out. Causal mode has only the first range."""
        blk, w, g = self.random_block, self.window, self.global_tokens
        first = torch.full_like(qb, -(-g // blk))  # the blocks holding a global token are never drawn
        if self.causal:  # keys of block qb's window: from qb*blk - w + 1 on
            window_start = torch.div(qb * blk - w + 1, blk, rounding_mode="floor").clamp(min=0)
            a1 = torch.maximum(window_start, first)
            return (first, a1), (a1, a1)
        half = w // 2  # bidirectional window |i - j| <= w // 2
        lo = torch.div(qb * blk - half, blk, rounding_mode="floor").clamp(min=0)
        hi = torch.div(qb * blk + blk - 1 + half, blk, rounding_mode="floor")
        a1 = torch.maximum(lo, first)
        b0 = torch.maximum(hi + 1, first)
        return (first, a1), (b0, torch.maximum(b0, torch.full_like(b0, n_blocks)))

    def random_keys(self, seq_len: int, layer: int = 0) -> Pattern:
        r, blk, causal = self.random_blocks, self.random_block, self.causal
        n_blocks = -(-seq_len // blk)
        stream = (self.seed * 1_000_003 + layer * 7919) & _MASK31  # one draw per (seed, layer) ...

        def fn(b, h, q, k):
            qb, kb = q // blk, k // blk
            (a0, a1), (b0, b1) = self.candidate_blocks(qb, n_blocks)
            m1 = a1 - a0
            m = m1 + (b1 - b0)
            c = torch.where(kb < a1, kb - a0, torch.where(kb >= b0, m1 + kb - b0, torch.full_like(kb, -1)))
            c = torch.where(kb < a0, torch.full_like(c, -1), c)
            key = _hash(_hash(stream + h) * 65_599 + qb)  # ... then per head and query block
            return random_block_choice(c, m, r, key)
        shape = "c" if causal else f"n{n_blocks}"
        return Pattern(f"random{r}x{blk}w{self.window}g{self.global_tokens}s{self.seed}l{layer}{shape}", fn,
                       per_head=r > 0)

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        p = sliding_window(self.window, self.causal)
        if self.random_blocks > 0:
            p = p | self.random_keys(seq_len, layer)
        if self.global_tokens > 0:
            p = p | global_tokens(self.global_tokens)
        return base(self.causal) & p

    def validate(self, context: int, n_head: int) -> None:
        if not 1 <= self.window <= context:
            raise ConfigError(f"attention.window={self.window} must be in [1, {context}] (the context length)")
        if not 0 <= self.global_tokens <= context:
            raise ConfigError(f"attention.global_tokens={self.global_tokens} must be in [0, {context}]")
        if not 1 <= self.random_block <= context:
            raise ConfigError(f"attention.random_block={self.random_block} must be in [1, {context}]")
        if not 0 <= self.random_blocks <= 16:
            raise ConfigError(f"attention.random_blocks={self.random_blocks} must be in [0, 16] (the paper uses 3)")
        if self.seed < 0:
            raise ConfigError(f"attention.seed={self.seed} must be >= 0")

    @classmethod
    def example(cls, n: int) -> dict:
        blk = 64 if n >= 2048 else 16 if n >= 256 else 8
        return {"window": min(256, max(4, n // 8)), "global_tokens": min(16, max(1, n // 32)), "random_blocks": 2,
                "random_block": blk, "block_size": max(16, blk)}

    @classmethod
    def variants(cls, n: int) -> list[dict]:
        return [{"window": 6, "global_tokens": 2, "random_blocks": 2, "random_block": 8, "block_size": 8},
                {"window": 5, "global_tokens": 0, "random_blocks": 1, "random_block": 16, "seed": 3, "block_size": 16},
                {"window": 9, "global_tokens": 1, "random_blocks": 3, "random_block": 4, "seed": 1, "block_size": 16}]


ATTENTION_TYPE = BigBirdAttention
