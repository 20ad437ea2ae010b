"""full: vanilla softmax(Q K^T / sqrt(d)) V with the causal (or no) mask. The O(n^2) baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, base


@dataclass
class FullAttention(AttentionType):
    backend: str = "dense"  # materialises the n x n scores on purpose: this is the quadratic baseline
    name = "full"

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        return base(self.causal)  # j <= i, or every pair

    def backends(self, adds_scores: bool = False) -> list[str]:
        # the baseline keeps the n x n scores (dense) or is PyTorch's fused kernel for comparison (sdpa);
        # the same pattern computed in tiles by our own backends is the `flash` type
        return ["dense"] if adds_scores else ["dense", "sdpa"]

    def auto_backend(self, device: torch.device, adds_scores: bool = False) -> str:
        return "dense"

    @classmethod
    def variants(cls, n: int) -> list[dict]:
        return [{}, {"block_size": 16}]


ATTENTION_TYPE = FullAttention
