"""sparse: the fixed patterns of the Sparse Transformer (Child et al. 2019), computed block-sparse.

``strided``: query i sees the band |i-j| < l and every l-th key ((i-j) mod l == 0).
``fixed``: query i sees its own block of l positions and the last c ("summary") positions of every block.
In causal mode both are intersected with j <= i. ``heads`` says how the two components combine (union in
every head, split between even/odd heads, or alternating layers). With l ~ sqrt(n) each query sees
O(sqrt(n)) keys, so the kept blocks, and with them time and memory, grow like O(n sqrt(n)).

The fixed pattern fits blocks well when block_size divides l and c <= block_size. The strided pattern's
"every l-th key" lines cross every key block, so in a block layout it saves memory but little time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, band, base, block_summaries, every_lth, same_block, split_heads
from attnlab.errors import ConfigError

KINDS = ("fixed", "strided")
HEAD_LAYOUTS = ("alternate", "split", "union")


@dataclass
class SparseAttention(AttentionType):
    pattern_kind: str = "fixed"  # the paper found 'fixed' better for text, 'strided' for images
    stride: int = 16  # l: block length (fixed) or stride (strided); ~sqrt(context) is the paper's choice
    summary: int = 4  # c: summary positions per block (fixed only); the paper used c in {8, 16, 32} for l=128
    heads: str = "union"  # union | split | alternate: how the two components share heads / layers
    block_size: int = 16  # tile edge; a divisor of stride keeps blocks full, small tiles skip more work
    name = "sparse"

    def components(self) -> tuple[Pattern, Pattern]:
        if self.pattern_kind == "strided":
            return band(self.stride), every_lth(self.stride)
        return same_block(self.stride), block_summaries(self.stride, self.summary)

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        first, second = self.components()
        if self.heads == "split":
            p = split_heads(first, second)
        elif self.heads == "alternate":
            p = first if layer % 2 == 0 else second
        else:
            p = first | second
        return base(self.causal) & p

    def keys_still_visible(self, key_pos: torch.Tensor, next_query: int, layer: int = 0) -> torch.Tensor | None:
        if not self.causal or self.pattern_kind == "strided":
            return None  # every l-th key: a query far enough ahead reaches any earlier key
        l, c = self.stride, self.summary
        # fixed: later queries see their own block (only the current one holds cached keys) and the summaries
        return (key_pos // l == next_query // l) | (key_pos % l >= l - c)

    def validate(self, context: int, n_head: int) -> None:
        if self.pattern_kind not in KINDS:
            raise ConfigError(f"attention.pattern_kind={self.pattern_kind!r}; valid: {sorted(KINDS)}")
        if not 1 <= self.stride <= context:
            raise ConfigError(f"attention.stride={self.stride} makes no pattern: it must be in [1, {context}] "
                             f"(the context length)")
        if self.pattern_kind == "fixed" and not 1 <= self.summary <= self.stride:
            raise ConfigError(f"attention.summary={self.summary} makes no pattern: it must be in "
                             f"[1, stride={self.stride}]")
        if self.heads not in HEAD_LAYOUTS:
            raise ConfigError(f"attention.heads={self.heads!r}; valid: {list(HEAD_LAYOUTS)}")
        if self.heads == "split" and n_head < 2:
            raise ConfigError(f"attention.heads=split needs at least 2 heads, the model has n_head={n_head}")

    @classmethod
    def example(cls, n: int) -> dict:
        block = 16
        stride = max(block, round(math.sqrt(n) / block) * block)  # l ~ sqrt(n), a multiple of the block
        return {"pattern_kind": "fixed", "stride": min(stride, max(n, 1)), "summary": min(8, stride),
                "block_size": block}

    @classmethod
    def variants(cls, n: int) -> list[dict]:
        return [{"pattern_kind": "fixed", "stride": 8, "summary": 2, "heads": "union", "block_size": 8},
                {"pattern_kind": "strided", "stride": 5, "heads": "split", "block_size": 16},
                {"pattern_kind": "fixed", "stride": 6, "summary": 3, "heads": "alternate", "block_size": 16}]


ATTENTION_TYPE = SparseAttention
