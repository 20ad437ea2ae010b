"""An attention type = a pattern (which keys each query sees) x a backend (how the scores are computed).

Subclasses are small dataclasses: their fields are the pattern's parameters (as in ``conf/attention/*.yaml``),
``pattern()`` builds the predicate, ``validate()`` rejects settings that make no pattern, and
``auto_backend()`` says which backend ``backend: auto`` means on a device.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from attnlab.attention.implementations import get_backend
from attnlab.attention.patterns import Pattern


@dataclass
class AttentionType:
    causal: bool = True  # language models are causal; false gives the encoder (bidirectional) variant
    backend: str = "auto"  # one of BACKENDS or 'auto' (the fastest this type supports on the device)
    block_size: int = 64  # tile edge of the blocked / Triton / Flex backends; dense and sdpa ignore it

    name: ClassVar[str] = "?"
    backends: ClassVar[tuple[str, ...]] = ()  # the backends that compute this type exactly and efficiently

    # --- to override -------------------------------------------------------------------------------
    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        raise NotImplementedError

    def validate(self, context: int, n_head: int) -> None:
        """Raise ValueError with the bad value and what is allowed."""

    def auto_backend(self, device: torch.device) -> str:
        return self.backends[0]

    # --- shared --------------------------------------------------------------------------------------
    def check(self, context: int, n_head: int, device: torch.device | str | None = None) -> None:
        """All the checks that can run before training: backend known and supported, pattern valid, and, when
        ``device`` is given, the backend usable there (the model is built on the CPU before it moves, so
        construction checks the settings only; ``train`` checks the device it will run on)."""
        if self.backend != "auto":
            get_backend(self.backend)  # unknown names list the valid ones
            if self.backend not in self.backends:
                raise ValueError(f"attention {self.name!r} does not support backend {self.backend!r}; "
                                 f"valid: {list(self.backends) + ['auto']}")
            reason = get_backend(self.backend).unavailable_reason(torch.device(device)) if device else None
            if reason:
                raise ValueError(f"attention backend {self.backend!r} is not available: {reason}")
        if self.block_size < 1:
            raise ValueError(f"attention.block_size must be >= 1, got {self.block_size}")
        if self.backend == "triton" and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"attention.block_size={self.block_size}: the triton backend needs a power of two >= 16")
        self.validate(context, n_head)

    def resolved_backend(self, device: torch.device) -> str:
        return self.auto_backend(device) if self.backend == "auto" else self.backend

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """q, k, v: (B, H, N, D) -> (B, H, N, D)."""
        backend = get_backend(self.resolved_backend(q.device))
        return backend.fn(q, k, v, self.cached_pattern(q.shape[2], layer), self.block_size)

    def cached_pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        """One Pattern object per (length, layer), so layouts and block masks cached on it are reused."""
        cache = self.__dict__.setdefault("_pattern_cache", {})
        key = (seq_len, layer)
        if key not in cache:
            cache[key] = self.pattern(seq_len, layer)
        return cache[key]

    def describe(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def attended_keys(self, seq_len: int, layer: int = 0) -> int:
        """Number of allowed (query, key) pairs per head (averaged over heads): what the scores cost."""
        from attnlab.attention.layout import block_layout
        lay = block_layout(self.cached_pattern(seq_len, layer), seq_len, 128, 2)
        return lay.allowed_pairs // lay.n_heads
