"""Dense attention: materialise the n x n scores, mask them with the predicate, softmax, multiply by V.

This is ``full`` attention, O(n^2) in memory and time, and the oracle every other backend is tested against.
"""
from __future__ import annotations

import math

import torch

from attnlab.attention.patterns import Pattern


def masked_attention(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """q, k, v: (B, H, N, D); mask: bool, broadcastable to (B, H, N, N). Fully masked rows give 0."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, N): the quadratic part
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, H, N, N)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no allowed key
    return probs @ v  # (B, H, N, D)


def dense_attention(q, k, v, pattern: Pattern, block: int = 0) -> torch.Tensor:
    """The dense backend: the explicit mask comes from the same predicate as everything else."""
    H, N = q.shape[1], q.shape[2]
    mask = pattern.dense(N, N, H if pattern.per_head else 1, device=q.device)  # (H or 1, N, N)
    return masked_attention(q, k, v, mask.unsqueeze(0))  # (B, H, N, D)
