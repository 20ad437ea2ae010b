"""longformer: sliding-window attention for every token plus global attention for a few (Beltagy et al. 2020).

Causal: query i sees keys i-w < j <= i (w keys including itself; with dilation d, keys i, i-d, ..., i-(w-1)d).
Bidirectional: |i-j| <= w/2. Global tokens (the first ``global_tokens`` positions, or an explicit list) see
every key they may see and are seen by every query (subject to causality). Time and memory O(n (w + g)).
``windows`` optionally gives one window per layer (the paper grows the window with depth).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, longformer


@dataclass
class LongformerAttention(AttentionType):
    window: int = 64  # w: keys each token sees locally; the paper uses 512 at n=4096
    global_tokens: int | list = 1  # first k positions are global (an int), or an explicit list of positions
    dilation: int = 1  # d: spacing of the window's keys; d > 1 widens the receptive field at equal cost
    windows: list | None = None  # optional per-layer windows overriding ``window``; cycled if shorter than n_layer
    block_size: int = 32  # tile edge; ~window/2 keeps the band's partial blocks few
    name = "longformer"
    backends = ("blocked", "flex", "triton", "dense")

    def window_at(self, layer: int) -> int:
        return int(self.windows[layer % len(self.windows)]) if self.windows else self.window

    def _globals(self):
        g = self.global_tokens
        return int(g) if isinstance(g, int) else [int(p) for p in g]

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        return longformer(self.window_at(layer), self._globals(), seq_len, self.causal, self.dilation)

    def validate(self, context: int, n_head: int) -> None:
        for w in (self.windows or [self.window]):
            if not 1 <= int(w) <= context:
                raise ValueError(f"attention.window={w} must be in [1, {context}] (the context length)")
        if self.dilation < 1:
            raise ValueError(f"attention.dilation={self.dilation} must be >= 1")
        g = self._globals()
        if isinstance(g, int):
            if not 0 <= g <= context:
                raise ValueError(f"attention.global_tokens={g}: the number of global tokens must be in "
                                 f"[0, {context}] (the context length)")
        else:
            bad = [p for p in g if not 0 <= p < context]
            if bad:
                raise ValueError(f"attention.global_tokens has positions {bad} outside the context [0, {context})")
            if len(set(g)) > context:
                raise ValueError(f"{len(set(g))} global tokens for a context of {context}")

    def auto_backend(self, device: torch.device) -> str:
        return "flex" if device.type == "cuda" else "blocked"
