"""Your own text: a .txt file, a folder of them or a glob; split by file (3 or more) or by lines (see corpus.py).

The text is identified without reading it, by each file's path, size and modification time (and the split
settings), so a cache hit reads nothing; the text is read only when the token cache is built."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.corpus import DataError, matching_files, text_file_splits
from attnlab.data.sources import Corpus, Split


@dataclass(frozen=True)
class Settings(Split):
    path: str | None = None  # a .txt file, a folder of them or a glob (required)


def stat_key(files: list[str], settings, *keys: str) -> str:
    """A key for files' text from their paths, sizes and modification times, and the settings that split them."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(repr([getattr(settings, k) for k in keys]).encode())
    return h.hexdigest()[:16]


def corpus(settings: Settings, cache_dir: Path) -> Corpus:
    path = settings.path
    if not path:
        raise DataError("dataset=text_files needs dataset.path=<file, folder or glob of .txt files>")
    files = matching_files(path, ".txt")
    if not files:
        raise DataError(f"dataset.path={path!r} matches no .txt file")
    args = (path, settings.val_fraction, settings.test_fraction, settings.split_seed)
    key = stat_key(files, settings, "val_fraction", "test_fraction", "split_seed")
    return Corpus(key, lambda: text_file_splits(*args), {})


SOURCE = corpus
