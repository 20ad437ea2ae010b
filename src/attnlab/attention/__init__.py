"""Attention types, looked up by name. Adding a type: one source file, one yaml, one line below."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from attnlab.attention.base import AttentionType
from attnlab.attention.flash import FlashAttention
from attnlab.attention.full import FullAttention
from attnlab.attention.implementations import BACKENDS
from attnlab.attention.longformer import LongformerAttention
from attnlab.attention.sparse import SparseAttention

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
    if isinstance(cfg.get("global_tokens"), (list, tuple)):
        cfg["global_tokens"] = [int(p) for p in cfg["global_tokens"]]
    if cfg.get("windows") is not None:
        cfg["windows"] = list(cfg["windows"])
    return cls(**cfg)


__all__ = ["ATTENTION_TYPES", "AttentionType", "BACKENDS", "build_attention"]
