"""Attention types, looked up by name (``registry.py``): a pattern (``patterns.py``, ``types/``) x a backend
(``backends/``)."""
from attnlab.attention.backends import BACKENDS, get_backend
from attnlab.attention.base import AttentionType
from attnlab.attention.registry import ATTENTION_TYPES, build_attention, example_attention

__all__ = ["ATTENTION_TYPES", "AttentionType", "BACKENDS", "build_attention", "example_attention", "get_backend"]
