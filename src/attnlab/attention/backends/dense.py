"""Dense attention: materialise the n x n scores, mask them with the predicate, softmax, multiply by V.

This is ``full`` attention, O(n^2) in memory and time, and the oracle every other backend is tested against.
"""
from __future__ import annotations

import math

import torch

from attnlab.attention.backends.layout import PER_BATCH
from attnlab.attention.patterns import Pattern, with_documents
from attnlab.attention.score_mods import ScoreMod


def masked_attention(q, k, v, mask: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """q, k, v: (B, H, N, D); mask: bool, broadcastable to (B, H, N, N); bias: added to the scores, broadcastable
    likewise. Fully masked rows give 0."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, N): the quadratic part
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, H, N, N)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no allowed key
    return probs @ v  # (B, H, N, D)


def full_mask(pattern: Pattern, B: int, H: int, N: int, documents: torch.Tensor | None, device) -> torch.Tensor:
    """The pattern (and documents) as an explicit mask, (B or 1, H or 1, N, N)."""
    if documents is None:
        return pattern.dense(N, N, H if pattern.per_head else 1, device=device).unsqueeze(0)  # (1, H|1, N, N)

    def build():
        b = torch.arange(B, device=device).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        h = torch.arange(H if pattern.per_head else 1, device=device).view(1, -1, 1, 1)  # (1, H|1, 1, 1)
        i = torch.arange(N, device=device)
        return with_documents(pattern, documents)(b, h, i.view(1, 1, -1, 1), i.view(1, 1, 1, -1))  # (B, H|1, N, N)
    return PER_BATCH.get(documents, ("full_mask", pattern, B, H if pattern.per_head else 1, N, str(device)), build)


def dense_attention(q, k, v, pattern: Pattern, block: int = 0, documents: torch.Tensor | None = None,
                    score_mod: ScoreMod | None = None) -> torch.Tensor:
    """The dense backend: the explicit mask comes from the same predicate as everything else."""
    B, H, N = q.shape[:3]
    bias = None if score_mod is None else score_mod.dense(N, N, H, device=q.device).unsqueeze(0)  # (1, H, N, N)
    return masked_attention(q, k, v, full_mask(pattern, B, H, N, documents, q.device), bias)  # (B, H, N, D)
