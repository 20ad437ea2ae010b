"""Score modifications: a float added to each allowed score before the softmax, next to the boolean pattern.

A score modification is ``score_mod(b, h, q_idx, kv_idx) -> float tensor`` on broadcastable integer tensors
(FlexAttention's shape without the score argument: here it is always *added*). Patterns decide which keys
a query sees; a score modification changes how much it weighs them. The backends that can add one (dense,
blocked, banded, flex) take it as an argument; the fused ones (sdpa, triton) cannot, and a type's ``auto``
backend then avoids them (``backends.BACKENDS[...].adds_scores``).

ALiBi (Press et al. 2022, "Train Short, Test Long") is the one shipped: ``-slope_h * |i - j|``, with one
slope per head from a geometric sequence, and no position embedding at all (``model.positions=alibi``).
``SCORE_MODS`` at the end is the registry the model reads ``model.positions`` from.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ScoreMod:
    """A named score modification. Like a pattern's, the name holds every parameter: derived biases are
    cached by it."""

    name: str
    fn: ScoreFn = field(compare=False, repr=False)

    def __call__(self, b, h, q_idx, kv_idx) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    @functools.cached_property
    def flex(self) -> Callable:
        """FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx)``, made once: a compiled kernel guards on the
        function it was given, so every call passes this same one."""
        return lambda score, b, h, q_idx, kv_idx: score + self.fn(b, h, q_idx, kv_idx).to(score.dtype)

    def dense(self, n_q: int, n_k: int, n_heads: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The explicit bias, (n_heads, n_q, n_k)."""
        h = torch.arange(n_heads, device=device).view(-1, 1, 1)  # (H, 1, 1)
        q = torch.arange(n_q, device=device).view(1, -1, 1)  # (1, n_q, 1)
        k = torch.arange(n_k, device=device).view(1, 1, -1)  # (1, 1, n_k)
        b = torch.zeros((), dtype=torch.long, device=device)
        return self(b, h, q, k).to(dtype).expand(n_heads, n_q, n_k)  # (H, n_q, n_k)


def alibi_slopes(n_head: int) -> list[float]:
    """The ALiBi paper's head slopes: for n a power of two, 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise the
    slopes of the largest power of two below n, then every other slope of twice that many for the rest."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    below = 2 ** int(math.floor(math.log2(n_head)))
    return geometric(below) + geometric(2 * below)[0::2][:n_head - below]


def alibi(n_head: int) -> ScoreMod:
    """ALiBi: head h adds -slope_h * |i - j| (a causal model sees only j <= i, where this is -slope_h (i - j)).
    The slope is computed from h element-wise (``alibi_slopes``' two geometric runs), with no captured table,
    so the same function runs inside FlexAttention."""
    below = 2 ** int(math.floor(math.log2(n_head)))

    def fn(b, h, q, k):
        hf = h.to(torch.float32)
        slope = torch.where(h < below, torch.exp2(-8.0 * (hf + 1) / below),  # the first run
                            torch.exp2(-8.0 * (2 * (hf - below) + 1) / (2 * below)))  # every other of the second
        return -slope * (q - k).abs().to(torch.float32)
    return ScoreMod(f"alibi{n_head}", fn)


# The position schemes that are score modifications: ``model.positions=<name>`` builds ``SCORE_MODS[name](n_head)``.
# Adding one (a T5-style bucketed bias, a Kerple kernel) is a function here and a line below.
SCORE_MODS: dict[str, Callable[[int], ScoreMod]] = {
    "alibi": alibi,
}
