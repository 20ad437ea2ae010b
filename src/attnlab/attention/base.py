"""An attention type = a pattern (which keys each query sees) x a backend (how the scores are computed).

A type is a small dataclass in ``types/``: its fields are its settings (as in ``conf/attention/<name>.yaml``),
``pattern()`` builds its predicate from the primitives in ``patterns.py``, ``validate()`` rejects settings
that make no pattern, ``auto_backend()`` says what ``backend: auto`` means on a device, and ``example()`` /
``variants()`` give settings for a length that the tests, benchmarks and pictures use. Which backends can
compute it follows from its pattern (``backends.backends_for``). Registering it in ``registry.py`` makes it
trained, tested, benchmarked and drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch

from attnlab.attention.backends import backends_for, get_backend
from attnlab.attention.backends.layout import allowed_pairs
from attnlab.attention.patterns import Pattern
from attnlab.attention.score_mods import ScoreMod
from attnlab.errors import ConfigError


@dataclass
class AttentionType:
    causal: bool = True  # language models are causal; false gives the encoder (bidirectional) variant
    backend: str = "auto"  # a registered backend, or 'auto' (the fastest exact one on the device)
    block_size: int = 64  # tile edge of the blocked / Triton / Flex backends; dense and sdpa ignore it

    name: ClassVar[str] = "?"

    # --- what a type defines ----------------------------------------------------------------------------
    def pattern(self, seq_len: int, layer: int = 0) -> Pattern:
        raise NotImplementedError

    def validate(self, context: int, n_head: int) -> None:
        """Raise ValueError naming the bad setting and what is allowed."""

    def auto_backend(self, device: torch.device, adds_scores: bool = False) -> str:
        """What ``backend: auto`` computes with on ``device``, decided here for every type: on CUDA FlexAttention
        where it computes the pattern (one compiled kernel skipping the empty blocks); on a CPU the batched band
        formulation where the pattern has that shape (fastest there), else the block loop. A type overrides it
        only where it knows better (full: the quadratic baseline on purpose; flash: PyTorch's fused kernel).
        ``adds_scores``: the model adds a score modification (ALiBi), so only backends that can add one count."""
        options = self.backends(adds_scores)
        if device.type == "cuda" and "flex" in options:
            return "flex"
        return "banded" if "banded" in options else "blocked"

    def keys_still_visible(self, key_pos: torch.Tensor, next_query: int, layer: int = 0) -> torch.Tensor | None:
        """Which cached keys (at positions ``key_pos``, all < next_query) a query at ``next_query`` or later may
        still attend to; the KV cache drops the others. None: every key stays (always correct, the default).
        ``tests/test_generation.py`` checks each type's answer against its pattern."""
        return None

    @classmethod
    def example(cls, n: int) -> dict[str, Any]:
        """Representative settings at sequence length n (benchmarks, pictures, scaling tests)."""
        return {}

    @classmethod
    def variants(cls, n: int) -> list[dict[str, Any]]:
        """Settings that together exercise every option at length n (the equivalence tests)."""
        return [cls.example(n)]

    # --- what a type with global rows declares (the model and the KV cache ask only these) ----------------
    @property
    def separate_global_projections(self) -> bool:
        """Whether global queries' rows have their own Q/K/V projections (Longformer's ``global_projections``):
        the model then gives each layer a second projection and uses it on the rows ``is_global`` names, and the
        KV cache keeps those projections' keys while ``last_global_query`` has not passed."""
        return False

    def is_global(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (T,) -> (T,) bool: the rows computed with the global projections (none by default)."""
        return torch.zeros_like(positions, dtype=torch.bool)

    def last_global_query(self) -> int:
        """The last position whose query is global (-1: none): after it no row needs the global projections."""
        return -1

    # --- shared -------------------------------------------------------------------------------------
    def backends(self, adds_scores: bool = False) -> list[str]:
        """The backends that compute this type exactly (its pattern decides), and with ``adds_scores`` can add
        a score modification too."""
        return [b for b in backends_for(self.pattern(16)) if not adds_scores or get_backend(b).adds_scores]

    def check(self, context: int, n_head: int, device: torch.device | str | None = None,
              score_mod: str | None = None) -> None:
        """Every check that can run before training: backend known and able to compute this pattern, the
        block size usable, the settings valid and, when ``device`` is given, the backend usable there (the
        model is built on the CPU before it moves, so construction checks the settings only). ``score_mod``:
        the name of the score modification the model adds (model.positions=alibi), which the backend must take."""
        if self.block_size < 1:
            raise ConfigError(f"attention.block_size must be >= 1, got {self.block_size}")
        if self.block_size > max(context, 1024):  # a bound (a tile of 10^9 would be allocated), not a tuning rule
            raise ConfigError(f"attention.block_size={self.block_size} is larger than the context {context} "
                             f"(model.context) and than 1024: one tile would cover the whole sequence; use at most "
                             f"{max(context, 1024)}")
        self.validate(context, n_head)
        if self.backend == "auto":
            return
        backend = get_backend(self.backend)  # unknown names list the valid ones
        if self.backend not in self.backends():
            raise ConfigError(f"attention {self.name!r} does not support backend {self.backend!r}; "
                             f"valid: {self.backends() + ['auto']}")
        if score_mod and not backend.adds_scores:
            raise ConfigError(f"attention backend {self.backend!r} cannot add a score modification ({score_mod}): it is "
                              f"a fused kernel with no bias input; valid with it: {self.backends(True) + ['auto']}")
        bad_block = backend.bad_block(self.block_size)
        if bad_block:
            raise ConfigError(bad_block)
        reason = backend.unavailable_reason(torch.device(device)) if device is not None else None
        if reason:
            raise ConfigError(f"attention backend {self.backend!r} is not available: {reason}")

    def resolved_backend(self, device: torch.device | str, adds_scores: bool = False) -> str:
        return self.auto_backend(torch.device(device), adds_scores) if self.backend == "auto" else self.backend

    def bind(self, device: torch.device | str, layer: int = 0, score_mod: ScoreMod | None = None
             ) -> Callable[..., torch.Tensor]:
        """The attention of one layer as a function ``attend(q, k, v, documents=None)``, with the backend resolved
        once for a device and the score modification (if any) fixed."""
        fn, block = get_backend(self.resolved_backend(device, score_mod is not None)).fn, self.block_size
        last = [None, None]  # (length, pattern) of the previous call: training repeats one length

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor | None = None
                   ) -> torch.Tensor:
            if last[0] != q.shape[2]:
                last[:] = [q.shape[2], self.pattern(q.shape[2], layer)]
            return fn(q, k, v, last[1], block, documents, score_mod)  # (B, H, N, D)
        return attend

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int = 0,
                 documents: torch.Tensor | None = None, score_mod: ScoreMod | None = None) -> torch.Tensor:
        """q, k, v: (B, H, N, D) -> (B, H, N, D); resolves the backend on every call (tests, benchmarks).
        documents (B, N): document ids (masking across them); score_mod: added to the scores (ALiBi)."""
        return self.bind(q.device, layer, score_mod)(q, k, v, documents)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def attended_keys(self, seq_len: int, layer: int = 0) -> int:
        """Number of allowed (query, key) pairs per head (averaged over heads): what the scores cost."""
        return allowed_pairs(self.pattern(seq_len, layer), seq_len, 2)
