"""The registry: the one list of attention types. Tests, benchmarks, pictures and configs iterate over it.

Adding a type: one file in ``types/``, one yaml in ``conf/attention/``, one line below.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from attnlab.attention.base import AttentionType
from attnlab.attention.types.flash import FlashAttention
from attnlab.attention.types.full import FullAttention
from attnlab.attention.types.longformer import LongformerAttention
from attnlab.attention.types.sparse import SparseAttention

ATTENTION_TYPES: dict[str, type[AttentionType]] = {
    "full": FullAttention,
    "flash": FlashAttention,
    "sparse": SparseAttention,
    "longformer": LongformerAttention,
}


def build_attention(cfg: Mapping[str, Any]) -> AttentionType:
    """``{'name': 'longformer', 'window': 64, ...}`` -> a LongformerAttention. Errors list the valid choices."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in ATTENTION_TYPES:
        raise ValueError(f"unknown attention type {name!r}; valid: {sorted(ATTENTION_TYPES)}")
    cls = ATTENTION_TYPES[name]
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"attention {name!r} has no setting(s) {unknown}; valid: {sorted(valid)}")
    return cls(**cfg)


def example_attention(name: str, n: int, **overrides) -> AttentionType:
    """Type ``name`` at its representative settings for length n (benchmarks, pictures)."""
    return build_attention({"name": name, **ATTENTION_TYPES[name].example(n), **overrides})
