"""full: vanilla softmax(Q K^T / sqrt(d)) V with the causal (or no) mask. The O(n^2) baseline."""
from __future__ import annotations

from dataclasses import dataclass

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, base


@dataclass
class FullAttention(AttentionType):
    backend: str = "dense"  # materialises the n x n scores on purpose: this is the quadratic baseline
    name = "full"
    backends = ("dense", "sdpa")

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        return base(self.causal)

    def attended_keys(self, seq_len: int, layer: int = 0) -> int:
        return seq_len * (seq_len + 1) // 2 if self.causal else seq_len * seq_len
