"""PyTorch's fused scaled_dot_product_attention (flash / memory-efficient / cuDNN kernels on GPU, a flash
kernel on CPU). It computes exactly the patterns a fused kernel needs no mask for: causal and bidirectional."""
from __future__ import annotations

import torch

from attnlab.attention.patterns import Pattern


def handles(pattern: Pattern) -> bool:
    return pattern.fused_as in ("causal", "all")


def sdpa_attention(q, k, v, pattern: Pattern, block: int = 0) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D)."""
    if not handles(pattern):
        raise ValueError(f"the sdpa backend computes causal or bidirectional attention only, not {pattern.name}")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=pattern.fused_as == "causal")
