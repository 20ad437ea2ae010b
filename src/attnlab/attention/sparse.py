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

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, child_sparse


@dataclass
class SparseAttention(AttentionType):
    pattern_kind: str = "fixed"  # the paper found 'fixed' better for text, 'strided' for images
    stride: int = 32  # l: block length (fixed) or stride (strided); ~sqrt(context) is the paper's choice
    summary: int = 4  # c: summary positions per block (fixed only); the paper used c in {8, 16, 32} for l=128
    heads: str = "union"  # union | split | alternate: how the two components share heads / layers
    block_size: int = 16  # tile edge; a divisor of stride keeps blocks full, small tiles skip more work
    name = "sparse"
    backends = ("blocked", "flex", "triton", "dense")

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        return child_sparse(self.pattern_kind, self.stride, self.summary, self.causal, self.heads, layer)

    def validate(self, context: int, n_head: int) -> None:
        if self.pattern_kind not in ("fixed", "strided"):
            raise ValueError(f"attention.pattern_kind={self.pattern_kind!r}; valid: ['fixed', 'strided']")
        if not 1 <= self.stride <= context:
            raise ValueError(f"attention.stride={self.stride} makes no pattern: it must be in [1, {context}] "
                             f"(the context length)")
        if self.pattern_kind == "fixed" and not 1 <= self.summary <= self.stride:
            raise ValueError(f"attention.summary={self.summary} makes no pattern: it must be in "
                             f"[1, stride={self.stride}]")
        if self.heads not in ("union", "split", "alternate"):
            raise ValueError(f"attention.heads={self.heads!r}; valid: ['alternate', 'split', 'union']")
        if self.heads == "split" and n_head < 2:
            raise ValueError(f"attention.heads=split needs at least 2 heads, the model has n_head={n_head}")

    def auto_backend(self, device: torch.device) -> str:
        return "flex" if device.type == "cuda" else "blocked"
