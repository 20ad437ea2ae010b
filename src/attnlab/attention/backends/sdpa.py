"""PyTorch's fused scaled_dot_product_attention (flash / memory-efficient / cuDNN kernels on GPU, a flash
kernel on CPU). It computes exactly the patterns a fused kernel needs no mask for: causal and bidirectional.
Documents (packed sequences) go in as a boolean mask, as Hugging Face's models pass them; a score
modification (ALiBi) it cannot take: a float mask of n x n would be dense attention under another name."""
from __future__ import annotations

import torch

from attnlab.attention.patterns import Pattern


def handles(pattern: Pattern) -> bool:
    return pattern.fused_as in ("causal", "all")


def sdpa_attention(q, k, v, pattern: Pattern, block: int = 0, documents: torch.Tensor | None = None,
                   score_mod=None) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D)."""
    if not handles(pattern):
        raise ValueError(f"the sdpa backend computes causal or bidirectional attention only, not {pattern.name}")
    if score_mod is not None:
        raise ValueError(f"the sdpa backend cannot add the score modification {score_mod.name}")
    if documents is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=pattern.fused_as == "causal")
    from attnlab.attention.backends.dense import full_mask
    mask = full_mask(pattern, q.shape[0], 1, q.shape[2], documents, q.device)  # (B, 1, N, N)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
