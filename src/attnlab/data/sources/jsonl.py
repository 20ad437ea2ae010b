"""JSON Lines: one document per line, its text in one field (``text_field``), from a .jsonl file, a folder of
them or a glob. With 3 or more files the split is by file, else by document; both seeded by ``split_seed``."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.corpus import DataError
from attnlab.data.sources import Corpus, Split
from attnlab.data.sources.text_files import matching_files, stat_key


@dataclass(frozen=True)
class Settings(Split):
    path: str | None = None  # a .jsonl file, a folder of them or a glob (required)
    text_field: str = "text"  # the field holding each document's text


def files_of(path) -> list[str]:
    if not path:
        raise DataError("dataset=jsonl needs dataset.path=<a .jsonl file, a folder or a glob>")
    return matching_files(path, ".jsonl")


def _lines(f, file: str):
    """The file's lines (``f`` opened in binary), decoded one by one: bytes that are not UTF-8 are one line naming
    the line, not a traceback."""
    for n, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{file}:{n} is not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None


def documents(file: str, field: str) -> list[str]:
    docs = []
    with open(file, "rb") as f:
        lines = enumerate(_lines(f, file), 1)
        for n, line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{file}:{n} is not a JSON object ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{file}:{n} has no text in dataset.text_field={field!r} (its keys: {keys})")
            docs.append(record[field])
    return docs


def cut(items: list, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val, n_test = max(1, round(val_fraction * len(items))), max(1, round(test_fraction * len(items)))
    if n_val + n_test >= len(items):
        raise DataError(f"{len(items)} documents are too few to hold out {n_val} for validation and {n_test} for test")
    pick = lambda idx: [items[i] for i in sorted(idx)]  # noqa: E731 (the original order within a split)
    return {"val": pick(order[:n_val]), "test": pick(order[n_val:n_val + n_test]), "train": pick(order[n_val + n_test:])}


def corpus(settings: Settings, cache_dir: Path) -> Corpus:
    files = files_of(settings.path)
    if not files:
        raise DataError(f"dataset.path={settings.path!r} matches no .jsonl file")
    field = settings.text_field
    fractions = (settings.val_fraction, settings.test_fraction, settings.split_seed)

    def read() -> dict[str, list[str]]:  # only when the token cache is built
        if len(files) >= 3:
            return {s: [d for f in chosen for d in documents(f, field)] for s, chosen in cut(files, *fractions).items()}
        return cut([d for f in files for d in documents(f, field)], *fractions)
    key = stat_key(files, settings, "text_field", "val_fraction", "test_fraction", "split_seed")
    return Corpus(key, read, {})


SOURCE = corpus
