"""longformer: sliding-window attention for every token plus global attention for a few (Beltagy et al. 2020).

Causal: query i sees keys i-w < j <= i (w keys including itself; with dilation d, keys i, i-d, ..., i-(w-1)d).
Bidirectional: |i-j| <= w/2. Global tokens (the first ``global_tokens`` positions, or an explicit list) see
every key they may see and are seen by every query (subject to causality). Time and memory O(n (w + g)).
``windows`` optionally gives one window per layer (the paper grows the window with depth).

``global_projections``: the paper's (and Hugging Face's) separate Q/K/V projections for the global queries'
own rows (a global token attending to everything); the local rows, global keys included, keep the shared
projections. Off by default: one set of projections, as in every other type. ``model.SelfAttention`` adds
the projections; converted or ``init_from`` weights start them as copies of the shared ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.attention.base import AttentionType
from attnlab.attention.patterns import Pattern, base, global_tokens, sliding_window
from attnlab.errors import ConfigError


@dataclass
class LongformerAttention(AttentionType):
    window: int = 32  # w: keys each token sees locally; the paper uses 512 at n=4096
    global_tokens: int | list = 1  # first k positions are global (an int), or an explicit list of positions
    dilation: int = 1  # d: spacing of the window's keys; d > 1 widens the receptive field at equal cost
    windows: list | None = None  # optional per-layer windows overriding ``window``; cycled if shorter than n_layer
    block_size: int = 32  # tile edge; ~window/2 keeps the band's partial blocks few
    global_projections: bool = False  # own Q/K/V for the global rows (the paper's); false shares the local ones
    name = "longformer"

    def __post_init__(self):
        for key in ("global_tokens", "windows"):
            items = getattr(self, key)
            if isinstance(items, (list, tuple)):
                bad = [p for p in items if isinstance(p, bool) or not isinstance(p, int)]
                if bad:  # (a float or "3" would be truncated or fail deep inside the pattern)
                    raise ConfigError(f"attention.{key}={list(items)!r} must be a list of whole numbers "
                                      f"(the item {bad[0]!r} is not)")
                setattr(self, key, list(items))

    def window_at(self, layer: int) -> int:
        return self.windows[layer % len(self.windows)] if self.windows else self.window

    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        p = sliding_window(self.window_at(layer), self.causal, self.dilation)
        g = self.global_tokens
        if (g if isinstance(g, int) else len(g)) > 0:
            p = p | global_tokens(g)
        return base(self.causal) & p

    @property
    def separate_global_projections(self) -> bool:
        return self.global_projections and self.n_global() > 0

    def n_global(self) -> int:
        g = self.global_tokens
        return g if isinstance(g, int) else len(g)

    def is_global(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (T,) -> (T,) bool: which are global tokens."""
        g = self.global_tokens
        if isinstance(g, int):
            return positions < g
        return torch.isin(positions, torch.tensor(g, dtype=torch.long, device=positions.device))

    def last_global_query(self) -> int:
        """The last position whose query is global: after it, no row needs the global projections."""
        g = self.global_tokens
        return g - 1 if isinstance(g, int) else max(g, default=-1)

    def keys_still_visible(self, key_pos: torch.Tensor, next_query: int, layer: int = 0) -> torch.Tensor | None:
        if not self.causal or next_query <= self.last_global_query():
            return None  # a global query still to come sees every earlier key
        # a query q >= next_query sees j when q - j < w * d: only j > next_query - w * d can still be in reach
        return self.is_global(key_pos) | (key_pos > next_query - self.window_at(layer) * self.dilation)

    def validate(self, context: int, n_head: int) -> None:
        for w in (self.windows or [self.window]):
            if not 1 <= w <= context:
                raise ConfigError(f"attention.window={w} must be in [1, {context}] (the context length)")
        if self.dilation < 1:
            raise ConfigError(f"attention.dilation={self.dilation} must be >= 1")
        g = self.global_tokens
        if isinstance(g, int):
            if not 0 <= g <= context:
                raise ConfigError(f"attention.global_tokens={g}: the number of global tokens must be in "
                                 f"[0, {context}] (the context length)")
        else:
            bad = [p for p in g if not 0 <= p < context]
            if bad:
                raise ConfigError(f"attention.global_tokens has positions {bad} outside the context [0, {context})")

    @classmethod
    def example(cls, n: int) -> dict:
        # the benchmark's settings from n = 2048 on (w 256, 16 global); smaller n scale down so the pattern stays sparse
        return {"window": min(256, max(4, n // 8)), "global_tokens": min(16, max(1, n // 32)),
                "block_size": 64 if n >= 1024 else 16}  # 64: banded's fastest query block at w = 256 on a CPU

    @classmethod
    def variants(cls, n: int) -> list[dict]:
        return [{"window": 7, "global_tokens": 2, "block_size": 8},
                {"window": 4, "global_tokens": [0, max(0, n - 2)], "block_size": 16},
                {"window": 3, "global_tokens": 0, "dilation": 2, "windows": [3, 9], "block_size": 16}]


ATTENTION_TYPE = LongformerAttention
