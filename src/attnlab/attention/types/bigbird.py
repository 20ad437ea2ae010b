"""bigbird: sliding window + global tokens + r random key blocks per query block (Zaheer et al. 2020).

Each query block of ``random_block`` positions also sees ``random_blocks`` whole key blocks chosen by a
seeded pseudo-random rule. The rule is element-wise arithmetic, so the predicate runs unchanged in every
backend and under FlexAttention: for query block qb, key block kb is chosen when
``(kb * A + qb * B + seed * C) mod m < r``, with m = qb + 1 in causal mode (only earlier blocks can be
chosen) or the number of blocks otherwise. A is a prime larger than any block count, so for each qb the
map kb -> (kb * A + ...) mod m is a permutation of [0, m): exactly min(r, m) blocks are picked, a
different set for every query block and seed. Time and memory O(n (w + g + r * block)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, base, global_tokens, sliding_window

_PRIME = 1_000_003  # larger than any block count in use, so it is coprime to every modulus m


@dataclass
class BigBirdAttention(AttentionType):
    window: int = 32  # w: local keys per token (causal: i-w < j <= i); the paper uses 3 blocks
    global_tokens: int = 2  # first g positions are global (the paper's ITC variant)
    random_blocks: int = 2  # r: random key blocks per query block; the paper uses 3
    random_block: int = 16  # edge of the random blocks (and a good block_size)
    seed: int = 0  # which random blocks; fixed per run so training and evaluation see one pattern
    block_size: int = 16
    name = "bigbird"

    def random_keys(self, seq_len: int) -> Pattern:
        r, blk, causal = self.random_blocks, self.random_block, self.causal
        n_blocks = -(-seq_len // blk)
        offset = self.seed * 7919

        def fn(b, h, q, k):
            qb, kb = q // blk, k // blk
            m = qb + 1 if causal else torch.full_like(qb, n_blocks)
            return (kb * _PRIME + qb * 104729 + offset) % m < r
        return Pattern(f"random{r}x{blk}s{self.seed}{'c' if causal else f'n{n_blocks}'}", fn)

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        p = sliding_window(self.window, self.causal) | self.random_keys(seq_len)
        if self.global_tokens > 0:
            p = p | global_tokens(self.global_tokens)
        return base(self.causal) & p

    def validate(self, context: int, n_head: int) -> None:
        if not 1 <= self.window <= context:
            raise ValueError(f"attention.window={self.window} must be in [1, {context}] (the context length)")
        if not 0 <= self.global_tokens <= context:
            raise ValueError(f"attention.global_tokens={self.global_tokens} must be in [0, {context}]")
        if not 1 <= self.random_block <= context:
            raise ValueError(f"attention.random_block={self.random_block} must be in [1, {context}]")
        if self.random_blocks < 0:
            raise ValueError(f"attention.random_blocks={self.random_blocks} must be >= 0")
        if self.seed < 0:
            raise ValueError(f"attention.seed={self.seed} must be >= 0")

    def auto_backend(self, device: torch.device) -> str:
        return "flex" if device.type == "cuda" else "blocked"

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
