"""flash: full's pattern, computed block by block with an online softmax and recomputed in the backward pass
instead of stored (Dao et al. 2022). Memory O(n), time still O(n^2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.types.full import FullAttention


@dataclass
class FlashAttention(FullAttention):
    backend: str = "auto"
    block_size: int = 64  # query/key tile; 64 keeps a tile of fp32 scores at 16 KiB
    name = "flash"

    def backends(self, adds_scores: bool = False) -> list[str]:
        return [b for b in super(FullAttention, self).backends(adds_scores) if b != "dense"]  # every tiled or fused one

    def auto_backend(self, device: torch.device, adds_scores: bool = False) -> str:
        # PyTorch's fused kernels (FA2 / cuDNN on GPU, a flash kernel on CPU) are the fastest exact
        # implementation everywhere; 'blocked' is our own, readable one. They take no score modification (ALiBi):
        # then the tiled backends that do
        if adds_scores:
            return super(FullAttention, self).auto_backend(device, adds_scores)
        return "sdpa"

    @classmethod
    def example(cls, n: int) -> dict:
        return {"block_size": min(128, max(16, 1 << (max(n, 2) - 1).bit_length()))}

    @classmethod
    def variants(cls, n: int) -> list[dict]:
        return [{"block_size": 16}, {"block_size": 32}]


ATTENTION_TYPE = FlashAttention
