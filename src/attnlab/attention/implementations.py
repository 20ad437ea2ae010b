"""The implementations (backends): how the scores a pattern allows are computed.

Each backend is ``fn(q, k, v, pattern, block) -> out`` with q, k, v, out of shape (B, H, N, D), plus an
availability check. ``auto`` is resolved per attention type (``AttentionType.auto_backend``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from attnlab.attention.blocked import blocked_attention
from attnlab.attention.dense import dense_attention
from attnlab.attention.patterns import Pattern


def sdpa_attention(q, k, v, pattern: Pattern, block: int = 0) -> torch.Tensor:
    """PyTorch's fused scaled_dot_product_attention (flash / memory-efficient / cuDNN kernels).

    Plain causal and bidirectional patterns use the fused kernels with no mask tensor; any other
    pattern is passed as an explicit dense boolean mask (correct, but O(n^2) memory again)."""
    F = torch.nn.functional
    if pattern.name == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if pattern.name == "bidirectional":
        return F.scaled_dot_product_attention(q, k, v)
    N, H = q.shape[2], q.shape[1]
    mask = pattern.dense(N, N, H if pattern.per_head else 1, device=q.device).unsqueeze(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flex_attention(q, k, v, pattern: Pattern, block: int = 128) -> torch.Tensor:
    from attnlab.attention.flex import flex_attention as _flex
    return _flex(q, k, v, pattern, block)


def triton_attention(q, k, v, pattern: Pattern, block: int = 64) -> torch.Tensor:
    from attnlab.attention.triton_kernel import triton_attention as _triton
    return _triton(q, k, v, pattern, block)


def _always(device: torch.device) -> str | None:
    return None


def _flex_available(device: torch.device) -> str | None:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return "torch.nn.attention.flex_attention is not in this torch (needs torch >= 2.5)"
    if device.type != "cuda":
        return f"FlexAttention trains on CUDA only (PyTorch has no FlexAttention backward on CPU); this device is {device.type}"
    return None


def _triton_available(device: torch.device) -> str | None:
    import os
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package is not installed (pip install triton)"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for the slow CPU interpreter); this device is {device.type}"


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    unavailable_reason: Callable[[torch.device], str | None]  # None when usable on that device
    description: str


BACKENDS: dict[str, Backend] = {
    "dense": Backend("dense", dense_attention, _always, "materialise n x n scores with the mask (the reference)"),
    "blocked": Backend("blocked", blocked_attention, _always,
                       "own tiled / block-sparse online softmax, recompute in backward (PyTorch, any device)"),
    "sdpa": Backend("sdpa", sdpa_attention, _always, "torch.nn.functional.scaled_dot_product_attention (fused)"),
    "flex": Backend("flex", flex_attention, _flex_available, "FlexAttention with a block mask from the predicate"),
    "triton": Backend("triton", triton_attention, _triton_available, "own block-sparse Triton kernel"),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid: {sorted(BACKENDS) + ['auto']}")
    return BACKENDS[name]
