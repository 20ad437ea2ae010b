"""Your own text: a .txt file, a folder of them or a glob; split by file (3 or more) or by lines (see corpus.py)."""
from __future__ import annotations

from pathlib import Path

from attnlab.data.corpus import fingerprint, text_file_splits
from attnlab.data.sources import Corpus


def corpus(settings: dict, cache_dir: Path) -> Corpus:
    splits = text_file_splits(settings.get("path"), settings.get("val_fraction", 0.05),
                              settings.get("test_fraction", 0.05), settings.get("split_seed", 1234))
    return Corpus(fingerprint(splits), lambda: splits, {})


SOURCE = corpus
