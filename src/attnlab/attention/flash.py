"""flash: the same scores as full, computed block by block with an online softmax and recomputed in the
backward pass instead of stored (Dao et al. 2022). Memory O(n), time still O(n^2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, base


@dataclass
class FlashAttention(AttentionType):
    block_size: int = 64  # query/key tile; 64 keeps a tile of fp32 scores at 16 KiB
    name = "flash"
    backends = ("blocked", "sdpa", "triton", "flex")

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        return base(self.causal)

    def auto_backend(self, device: torch.device) -> str:
        # PyTorch's fused kernels (FA2 / cuDNN on GPU, the flash CPU kernel on CPU) are the fastest exact
        # implementation available everywhere; 'blocked' is our own, readable one.
        return "sdpa"

    def attended_keys(self, seq_len: int, layer: int = 0) -> int:
        return seq_len * (seq_len + 1) // 2 if self.causal else seq_len * seq_len
