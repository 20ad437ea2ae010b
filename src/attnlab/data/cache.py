"""Tokenised splits cached as flat token arrays (memory-mapped on load), keyed by corpus, tokenizer and settings.

A cache entry is a folder written under a temporary name and renamed into place in one step, with a
``meta.json`` holding each split's length and the SHA-256 of every file in the entry (the token arrays and
the tokenizer). On load every file is checked against it; a partial or corrupt entry is reported, deleted
and rebuilt, never used. Builders of one entry take a lock (``building``), so two processes never write
it at once: the second waits and reuses the first one's entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 2: every file of the entry is checksummed, the tokenizer included; 3: UTF-8 bytes per split


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(entry: Path, verify: bool = True) -> dict[str, np.ndarray] | None:
    """The cached splits, or None when the entry is missing or fails its checks (then it is removed). Sizes and
    the small files (the tokenizer) are always checked; the token arrays' SHA-256 only with ``verify``
    (``data.verify=true``, and right after a build): a cache hit then costs milliseconds, not a re-read."""
    meta_path = entry / "meta.json"
    if not entry.exists():
        return None
    try:
        from attnlab import plain_yaml
        meta = plain_yaml.load_json(meta_path)
        if meta.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {meta.get('version')} != {CACHE_VERSION}")
        for name, sha in meta["files"].items():  # the tokenizer and anything else written beside the arrays
            if not isinstance(name, str) or Path(name).name != name or name in (".", "..") \
                    or not (entry / name).is_file():  # a name that leaves the entry (/dev/zero, ../x): damage
                raise ValueError(f"file name {name!r} is not a file of the entry")
            if _sha(entry / name) != sha:
                raise ValueError(f"{name} checksum mismatch")
        out = {}
        for split, info in meta["splits"].items():
            f = entry / f"{split}.bin"
            if split not in ("train", "val", "test") or not f.is_file():
                raise ValueError(f"split {split!r} is not a file of the entry")
            dtype = np.dtype(info["dtype"])
            if f.stat().st_size != info["length"] * dtype.itemsize:
                raise ValueError(f"{f.name} has {f.stat().st_size} bytes, expected {info['length'] * dtype.itemsize}")
            if verify and _sha(f) != info["sha256"]:
                raise ValueError(f"{f.name} checksum mismatch")
            out[split] = np.memmap(f, dtype=dtype, mode="r", shape=(info["length"],))
        return out
    except Exception as e:  # any damage means: rebuild
        log.warning("token cache %s is corrupt or partial (%s); rebuilding it", entry, e)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def save(entry: Path, splits: dict[str, np.ndarray], extra: dict, write_tokenizer) -> None:
    """Write all arrays and meta.json into a temporary folder, then rename it to ``entry`` atomically."""
    def write_splits(tmp: Path) -> dict[str, tuple[int, np.dtype]]:
        for split, arr in splits.items():
            arr.tofile(tmp / f"{split}.bin")
        return {split: (int(arr.size), arr.dtype) for split, arr in splits.items()}
    save_streamed(entry, write_splits, extra, write_tokenizer)


def save_streamed(entry: Path, write_splits, extra: dict, write_tokenizer) -> None:
    """``write_splits(folder)`` writes ``<split>.bin`` files there (in chunks, as it likes) and returns
    {split: (length, dtype)}; then the checksums and meta.json, and the folder is renamed to ``entry``
    atomically. Anything that fails on the way leaves no entry and no temporary folder."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp", dir=entry.parent))
    try:
        meta = {"version": CACHE_VERSION, "splits": {}, **extra}
        for split, (length, dtype) in write_splits(tmp).items():
            f = tmp / f"{split}.bin"
            meta["splits"][split] = {"length": int(length), "dtype": np.dtype(dtype).str, "sha256": _sha(f)}
        write_tokenizer(tmp)
        meta["files"] = {f.name: _sha(f) for f in sorted(tmp.iterdir()) if not f.name.endswith(".bin")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.exists():
                raise
            shutil.rmtree(tmp)  # another process finished this entry first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def building(entry: Path):
    """Hold the entry's lock while checking and building it, so concurrent runs build it once."""
    import fcntl
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
