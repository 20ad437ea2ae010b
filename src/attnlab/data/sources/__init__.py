"""Data sources: where a dataset's text comes from. One file per source, one line in ``SOURCE_MODULES``.

A source module defines ``corpus(settings, cache_dir) -> Corpus``: a key that identifies the text (the token
cache is keyed by it), a function that reads the splits as lists of documents ({'train': [...], 'val': [...],
'test': [...]}), and extra facts for the cache's meta.json. ``settings`` is the dataset config
(``conf/dataset/<name>.yaml``; its ``source:`` names the module).

Adding a source: ``sources/<name>.py`` ending with ``SOURCE = corpus``, a yaml in ``conf/dataset/`` with
``source: <name>``, and one line below.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, NamedTuple

from attnlab.data.corpus import DataError

SOURCE_MODULES = [  # one line per file in sources/
    "shakespeare",
    "text_files",
    "jsonl",
    "hub",
    "synthetic",
]


class Corpus(NamedTuple):
    key: str  # identifies the split text (and how it was split): the token cache's key
    read: Callable[[], dict[str, list[str]]]  # the splits as lists of documents
    extra: dict  # facts for the cache entry's meta.json (e.g. which plays)
    # tasks with answers (data/sources/synthetic.py): per split, the answers' token positions in the split's stream
    # and the stream's expected length; ``data.loss_on=answers`` counts the loss there only
    answers: Callable[[], dict[str, tuple]] | None = None


def get_source(name: str) -> Callable[[dict, Path], Corpus]:
    if name not in SOURCE_MODULES:
        raise DataError(f"unknown dataset.source {name!r}; valid: {sorted(SOURCE_MODULES)}")
    return importlib.import_module(f"attnlab.data.sources.{name}").SOURCE


def corpus(settings: dict, cache_dir: Path) -> Corpus:
    return get_source(settings.get("source"))(settings, cache_dir)
