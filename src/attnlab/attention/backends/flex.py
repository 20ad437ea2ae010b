"""FlexAttention backend: the same predicate becomes a FlexAttention ``mask_mod`` and block mask.

The block mask is built once per (pattern, length, heads, block, device) in the shared cache; the compiled
kernel skips the blocks the predicate never allows, like our own block layouts. PyTorch has no
FlexAttention backward on the CPU, so training with it needs CUDA; the forward runs anywhere (the tests
check it on the CPU, uncompiled).
"""
from __future__ import annotations

import functools

import torch

from attnlab.attention.backends.layout import DERIVED, PER_BATCH, layout_heads
from attnlab.attention.patterns import Pattern, with_documents
from attnlab.attention.score_mods import ScoreMod


def unavailable_reason(device: torch.device) -> str | None:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return "torch.nn.attention.flex_attention is not in this torch (needs torch >= 2.5)"
    if device.type != "cuda":
        return (f"FlexAttention trains on CUDA only (PyTorch has no FlexAttention backward on CPU); "
                f"this device is {device.type}")
    return None


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def block_mask_for(pattern: Pattern, seq_len: int, n_heads: int, block: int, device,
                   documents: torch.Tensor | None = None):
    """The block mask of ``pattern`` (cached by name), or of ``pattern & same_document`` for this batch (built per
    call: it depends on the data, as in attention-gym's document masking)."""
    from torch.nn.attention.flex_attention import create_block_mask
    heads = layout_heads(pattern, n_heads)
    if documents is not None:
        masked = with_documents(pattern, documents)
        return PER_BATCH.get(documents, ("flex_block_mask", pattern, seq_len, heads, block, str(device)),
                             lambda: create_block_mask(masked.fn, documents.shape[0], heads if pattern.per_head else None,
                                                       seq_len, seq_len, device=device, BLOCK_SIZE=block))
    return DERIVED.get(("flex_block_mask", pattern, seq_len, heads, block, str(device)),
                       lambda: create_block_mask(pattern.fn, None, heads if pattern.per_head else None,
                                                 seq_len, seq_len, device=device, BLOCK_SIZE=block))


def flex_attention(q, k, v, pattern: Pattern, block: int = 128, documents: torch.Tensor | None = None,
                   score_mod: ScoreMod | None = None, compiled: bool = True) -> torch.Tensor:
    """q, k, v: (B, H, N, D) -> (B, H, N, D). ``compiled=False`` runs PyTorch's unfused reference path."""
    bm = block_mask_for(pattern, q.shape[2], q.shape[1], block, q.device, documents)
    add = None if score_mod is None else score_mod.flex
    if compiled:
        return _compiled_flex()(q, k, v, score_mod=add, block_mask=bm)
    from torch.nn.attention.flex_attention import flex_attention as eager_flex
    return eager_flex(q, k, v, score_mod=add, block_mask=bm)
