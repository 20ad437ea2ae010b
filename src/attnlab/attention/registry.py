"""The registry: the one list of attention types. Tests, benchmarks, pictures and configs iterate over it.

Adding a type: one file in ``types/`` (ending with ``ATTENTION_TYPE = TheClass``), one yaml in
``conf/attention/``, one line in ``TYPE_MODULES`` below.
"""
from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any, Mapping

from attnlab.attention.base import AttentionType
from attnlab.errors import ConfigError
from attnlab.schema import check_fields

TYPE_MODULES = [  # one line per file in types/, in the order tables and pictures show them
    "full",
    "flash",
    "sparse",
    "longformer",
    "bigbird",
    "sinks",
]


def _type_of(module: str) -> type[AttentionType]:
    """The type a module in ``types/`` declares as ``ATTENTION_TYPE``."""
    return importlib.import_module(f"attnlab.attention.types.{module}").ATTENTION_TYPE


ATTENTION_TYPES: dict[str, type[AttentionType]] = {t.name: t for t in map(_type_of, TYPE_MODULES)}


def build_attention(cfg: Mapping[str, Any]) -> AttentionType:
    """``{'name': 'longformer', 'window': 64, ...}`` -> a LongformerAttention. Errors list the valid choices."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in ATTENTION_TYPES:
        raise ConfigError(f"unknown attention type {name!r}; valid: {sorted(ATTENTION_TYPES)}")
    cls = ATTENTION_TYPES[name]
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ConfigError(f"attention {name!r} has no setting(s) {unknown}; valid: {sorted(valid)}")
    check_fields(cls, cfg, "attention")  # types from the dataclass; ranges in its validate()
    return cls(**cfg)


def example_attention(name: str, n: int, **overrides) -> AttentionType:
    """Type ``name`` at its representative settings for length n (benchmarks, pictures)."""
    return build_attention({"name": name, **ATTENTION_TYPES[name].example(n), **overrides})
