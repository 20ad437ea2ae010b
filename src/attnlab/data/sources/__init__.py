"""Data sources: where a dataset's text comes from. One file per source, one line in ``SOURCE_MODULES``.

A source module defines ``Settings``, a dataclass of its settings with one default each (a reason on each), and
``corpus(settings, cache_dir) -> Corpus``: a key that identifies the text (the token cache is keyed by it), a
function that reads the splits as lists of documents ({'train': [...], 'val': [...], 'test': [...]}), and extra
facts for the cache's meta.json. The settings come from the dataset config (``conf/dataset/<name>.yaml``; its
``source:`` names the module), checked against the dataclass (``settings_of``): an unknown key or a value of the
wrong type is one line naming the valid ones. Sources without splits of their own inherit ``Split``: the seeded
train/val/test cut, stated once here.

Adding a source: ``sources/<name>.py`` with ``Settings`` and ending with ``SOURCE = corpus``, a yaml in
``conf/dataset/`` with ``source: <name>``, and one line below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple

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


COMMON = ("name", "source")  # every dataset config's own keys: its name (folders, caches) and its source


@dataclass(frozen=True)
class Split:
    """How text without splits of its own is cut into train / val / test: the shares held out, drawn with a seed
    that is fixed so that every run, every seed of a sweep and every attention type trains on the same split."""
    val_fraction: float = 0.05  # of the files (3 or more) or of the documents / rows
    test_fraction: float = 0.05
    split_seed: int = 1234


def _module(name: Any):
    if name not in SOURCE_MODULES:
        raise DataError(f"unknown dataset.source {name!r}; valid: {sorted(SOURCE_MODULES)}")
    return importlib.import_module(f"attnlab.data.sources.{name}")


def get_source(name: str) -> Callable:
    """The ``corpus`` function of source ``name`` (unknown names list the valid ones)."""
    return _module(name).SOURCE


def settings_of(dataset: dict):
    """The typed settings of a dataset config for its source (``Settings.from_dataset`` where a source reads
    them itself, as the synthetic tasks do)."""
    from attnlab.schema import check_fields
    cls = _module(dataset.get("source")).Settings
    if hasattr(cls, "from_dataset"):
        return cls.from_dataset(dataset)
    values = {k: v for k, v in dataset.items() if k not in COMMON}
    valid = [f.name for f in fields(cls)]
    unknown = sorted(k for k in values if k not in valid)
    if unknown:
        from attnlab.errors import ConfigError
        raise ConfigError(f"dataset.{unknown[0]} is not a setting of the {dataset.get('source')} source; valid: "
                          f"{sorted(valid)}")
    check_fields(cls, values, "dataset")  # each value against its field's type
    return cls(**values)


def setting_names(source: str) -> list[str]:
    """The settings a source takes (for messages and the schema test)."""
    return [f.name for f in fields(_module(source).Settings)]


def corpus(dataset: dict, cache_dir: Path) -> Corpus:
    return _module(dataset.get("source")).SOURCE(settings_of(dataset), cache_dir)
