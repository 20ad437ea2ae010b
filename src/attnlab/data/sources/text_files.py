"""Your own text: a .txt file, a folder of them or a glob; split by file (3 or more) or by lines (see corpus.py).

The text is identified without reading it, by each file's path, size and modification time (and the split
settings), so a cache hit reads nothing; the text is read only when the token cache is built."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from attnlab.data.corpus import DataError, matching_files, text_file_splits
from attnlab.data.sources import Corpus


def stat_key(files: list[str], settings: dict, *keys: str) -> str:
    """A key for files' text from their paths, sizes and modification times, and the settings that split them."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(repr([settings.get(k) for k in keys]).encode())
    return h.hexdigest()[:16]


def corpus(settings: dict, cache_dir: Path) -> Corpus:
    path = settings.get("path")
    if not path:
        raise DataError("dataset=text_files needs dataset.path=<file, folder or glob of .txt files>")
    files = matching_files(path, ".txt")
    if not files:
        raise DataError(f"dataset.path={path!r} matches no .txt file")
    args = (path, settings.get("val_fraction", 0.05), settings.get("test_fraction", 0.05), settings.get("split_seed", 1234))
    key = stat_key(files, settings, "val_fraction", "test_fraction", "split_seed")
    return Corpus(key, lambda: text_file_splits(*args), {})


SOURCE = corpus
