"""The backends: how the scores a pattern allows are computed. The one registry of them is ``BACKENDS``.

Each backend is ``fn(q, k, v, pattern, block, documents=None, score_mod=None) -> out`` with q, k, v, out of
shape (B, H, N, D), says which patterns it computes exactly (``handles``), where it runs
(``unavailable_reason``) and whether it can add a score modification (``adds_scores``). Every backend applies
document masking (``documents`` (B, N): ``pattern & same_document``). An attention type's
valid backends are the registered ones that handle its pattern: the type-backend knowledge lives here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from attnlab.attention.backends import banded as _banded
from attnlab.attention.backends import flex as _flex
from attnlab.attention.backends import sdpa as _sdpa
from attnlab.attention.backends.blocked import blocked_attention
from attnlab.attention.backends.dense import dense_attention
from attnlab.attention.patterns import Pattern
from attnlab.errors import ConfigError

AttentionFn = Callable[..., torch.Tensor]  # (q, k, v, pattern, block, documents=None, score_mod=None) -> out


def _any_pattern(pattern: Pattern) -> bool:
    return True


def _anywhere(device: torch.device) -> str | None:
    return None


def _triton_unavailable(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package is not installed (pip install triton)"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for the slow CPU interpreter); "
            f"this device is {device.type}")


def _triton_attention(q, k, v, pattern: Pattern, block: int = 64, documents=None, score_mod=None) -> torch.Tensor:
    from attnlab.attention.backends.triton_kernel import triton_attention  # imports triton: only when used
    return triton_attention(q, k, v, pattern, block, documents, score_mod)


def _triton_block_ok(block: int) -> str | None:
    if block < 16 or block & (block - 1):
        return f"attention.block_size={block}: the triton backend needs a power of two >= 16"
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    description: str
    handles: Callable[[Pattern], bool] = _any_pattern  # computes this pattern exactly (and efficiently)
    unavailable_reason: Callable[[torch.device], str | None] = _anywhere  # None when usable on that device
    bad_block: Callable[[int], str | None] = lambda block: None  # a message when it cannot use this block size
    uses_blocks: bool = True  # works from the block layout (built once per shape, outside any timing)
    materialises_scores: bool = False  # keeps the n x n probabilities for backward (O(n^2) memory)
    adds_scores: bool = True  # can add a score modification (ALiBi); a fused kernel with no bias input cannot


BACKENDS: dict[str, Backend] = {
    "dense": Backend("dense", dense_attention, "materialise n x n scores with the mask (the reference)",
                     uses_blocks=False, materialises_scores=True),
    "blocked": Backend("blocked", blocked_attention,
                       "own tiled / block-sparse online softmax, recompute in backward (PyTorch, any device)"),
    "banded": Backend("banded", _banded.banded_attention,
                      "each query block against its band of keys plus shared column keys, batched (any device)",
                      handles=_banded.handles),
    "sdpa": Backend("sdpa", _sdpa.sdpa_attention, "torch.nn.functional.scaled_dot_product_attention (fused)",
                    handles=_sdpa.handles, uses_blocks=False, adds_scores=False),
    "flex": Backend("flex", _flex.flex_attention, "FlexAttention with a block mask from the predicate",
                    unavailable_reason=_flex.unavailable_reason),
    "triton": Backend("triton", _triton_attention, "own block-sparse Triton kernel",
                      unavailable_reason=_triton_unavailable, bad_block=_triton_block_ok, adds_scores=False),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; valid: {sorted(BACKENDS) + ['auto']}")
    return BACKENDS[name]


def backends_for(pattern: Pattern) -> list[str]:
    """The registered backends that compute ``pattern`` exactly."""
    return [name for name, b in BACKENDS.items() if b.handles(pattern)]
