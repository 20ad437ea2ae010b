"""sinks: StreamingLLM's attention (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks").

Every query sees the first ``sinks`` tokens (the attention sinks, which trained models use as a place to put
attention that has nowhere better to go) and the last ``window`` keys (itself included). It is causal
Longformer with ``global_tokens = sinks`` <= ``window``: a sink's own query sees only earlier tokens, all
inside its window, so the sinks are keys every query sees and nothing more. Its KV cache keeps exactly the sinks
and the window, evicting the middle (a ring buffer): with rotary positions, generation streams past the training
context at constant memory. (``causal: false``, for the encoder tests, is Longformer's bidirectional pattern with
the sinks global.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern
from attnlab.attention.types.longformer import LongformerAttention
from attnlab.errors import ConfigError


@dataclass
class SinksAttention(AttentionType):
    sinks: int = 4  # initial tokens every query keeps (the paper keeps 4)
    window: int = 32  # the most recent keys each query sees, itself included
    block_size: int = 32  # tile edge; ~window/2 keeps the band's partial blocks few
    name = "sinks"

    def as_longformer(self) -> LongformerAttention:
        """The same pattern, as Longformer states it (its backends, cover and cache rule are this type's too)."""
        return LongformerAttention(causal=self.causal, backend=self.backend, block_size=self.block_size,
                                   window=self.window, global_tokens=self.sinks)

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        return self.as_longformer().pattern(seq_len, layer)

    def keys_still_visible(self, key_pos: torch.Tensor, next_query: int, layer: int = 0) -> torch.Tensor | None:
        return self.as_longformer().keys_still_visible(key_pos, next_query, layer)  # the sinks and the window

    def validate(self, context: int, n_head: int) -> None:
        if not 1 <= self.window <= context:
            raise ConfigError(f"attention.window={self.window} must be in [1, {context}] (the context length)")
        if not 0 <= self.sinks <= self.window:
            raise ConfigError(f"attention.sinks={self.sinks} must be in [0, {self.window}] (attention.window): a sink "
                              f"sees only earlier tokens, all within its window")

    @classmethod
    def example(cls, n: int) -> dict:
        return {"sinks": 4, "window": min(256, max(4, n // 8)), "block_size": 64 if n >= 1024 else 16}

    @classmethod
    def variants(cls, n: int) -> list[dict]:
        return [{"sinks": 4, "window": 7, "block_size": 8}, {"sinks": 1, "window": 16, "block_size": 16},
                {"sinks": 0, "window": 5, "block_size": 8}]


ATTENTION_TYPE = SinksAttention
