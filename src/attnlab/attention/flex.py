"""FlexAttention backend: the same predicate becomes a FlexAttention ``mask_mod`` and block mask.

The block mask is built once per (pattern, length, heads, block, device) and cached; the compiled kernel
skips the blocks the predicate never allows, just like our own block layouts.
"""
from __future__ import annotations

import torch

from attnlab.attention.patterns import Pattern

_BLOCK_MASKS: dict = {}
_COMPILED = None


def _compiled_flex():
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def block_mask_for(pattern: Pattern, seq_len: int, n_heads: int, block: int, device):
    from torch.nn.attention.flex_attention import create_block_mask
    key = (pattern, seq_len, n_heads if pattern.per_head else None, block, str(device))
    if key not in _BLOCK_MASKS:
        _BLOCK_MASKS[key] = create_block_mask(pattern.fn, None, n_heads if pattern.per_head else None,
                                              seq_len, seq_len, device=device, BLOCK_SIZE=block)
    return _BLOCK_MASKS[key]


def flex_attention(q, k, v, pattern: Pattern, block: int = 128) -> torch.Tensor:
    bm = block_mask_for(pattern, q.shape[2], q.shape[1], block, q.device)
    return _compiled_flex()(q, k, v, block_mask=bm)
