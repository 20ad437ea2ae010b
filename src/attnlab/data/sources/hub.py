"""A Hugging Face dataset through ``datasets`` (read from its cache offline; one clear line when unreachable).

``split_names`` maps the project's splits to the dataset's own (wikitext: validation); ``text_field`` is its
text column. A dataset without a validation or test split gets one cut from its training split
(``val_fraction`` / ``test_fraction``, seeded by ``split_seed``), and says so.

``documents``: ``joined`` (a split's rows are lines of one text, as wikitext's) or ``rows`` (each row is a
document, an end token between them: web text). With ``rows`` the rows are read in batches as they are
encoded, never held as a list. ``streaming: true`` reads the dataset as a stream (nothing downloaded first;
``rows`` only): the first ``val_rows`` rows of the training stream are the validation split, the next
``test_rows`` the test split, the rest the training split; the token cache is keyed by the settings and
``revision``."""
from __future__ import annotations

import hashlib
import logging
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnlab.data import corpus as texts
from attnlab.data.corpus import SPLITS, DataError, DocumentsInParts, cut_segments, fingerprint
from attnlab.data.sources import Corpus, Split

log = logging.getLogger(__name__)
DEFAULT_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class Settings(Split):
    path: str | None = None  # the dataset's hub id (e.g. Salesforce/wikitext) or a local dataset folder (required)
    hf_config: str | None = None  # its configuration (wikitext-2-raw-v1); None: its only one
    revision: str | None = None  # a commit of the dataset repository (streams); None: the newest
    text_field: str = "text"  # the text column
    documents: str = "joined"  # joined: a split's rows are lines of one text (wikitext); rows: each row a document
    streaming: bool = False  # read as a stream (rows only): nothing downloaded first
    split_names: dict = field(default_factory=dict)  # the project's split -> the dataset's name (DEFAULT_SPLIT_NAMES)
    val_rows: int = 1000  # streaming: the first rows of the training stream are the validation split ...
    test_rows: int = 1000  # ... and the next ones the test split

    @property
    def names(self) -> dict:
        return {**DEFAULT_SPLIT_NAMES, **(self.split_names or {})}


def load(path: str, name: str | None, cache_dir: str, streaming: bool = False, revision: str | None = None):
    try:
        import datasets
        return datasets.load_dataset(path, name, cache_dir=cache_dir, streaming=streaming, revision=revision)
    except Exception as e:  # network errors come as many types; all mean the same to the user
        raise DataError(
            f"could not load the Hugging Face dataset {path!r}{'/' + name if name else ''} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            f"The hub is not reachable from here and it is not in the cache {cache_dir!r}. "
            f"To use local text instead: python train.py dataset=text_files dataset.path=/path/to/texts "
            f"(a .txt file, a folder or a glob)") from e


class RowDocuments:
    """A table's text column as documents, read a batch of rows at a time whenever it is iterated; ``keep``: a
    bool per row of the table, the rows that belong here (None: all); ``skip`` and ``take`` cut a range of rows
    (a stream has no length: the rest after ``skip`` when ``take`` is None)."""

    def __init__(self, table, field: str, keep: np.ndarray | None = None, skip: int = 0, take: int | None = None):
        self.table, self.field, self.keep, self.skip, self.take = table, field, keep, skip, take

    def __iter__(self):
        if self.keep is not None:
            yield from self._kept()
            return
        n = 0
        for batch in self.table.iter(batch_size=1024):
            if self.field not in batch:
                raise DataError(f"dataset.text_field={self.field!r} is not a column of the stream (its columns: "
                                f"{sorted(batch)})")
            for text in batch[self.field]:
                text = text or ""  # a missing text is an empty document
                if n >= self.skip:
                    if self.take is not None and n >= self.skip + self.take:
                        return
                    yield text
                n += 1

    def _kept(self):
        """The kept rows, in order: batches stay Arrow tables and only kept rows become Python strings (a
        ``select`` would build, and datasets keep, an index table per pass)."""
        import pyarrow as pa
        start = 0
        for batch in self.table.with_format("arrow").iter(batch_size=4096):
            keep = self.keep[start:start + batch.num_rows]
            start += batch.num_rows
            if keep.any():
                yield from (text or "" for text in batch.filter(pa.array(keep)).column(self.field).to_pylist())


class JoinedRows(DocumentsInParts):
    """A table's text column as one document whose lines are the rows (``documents: joined``, wikitext's form),
    read a batch of rows at a time in parts of about SEGMENT_CHARS: never the whole split in memory."""

    def __init__(self, table, field: str, keep: np.ndarray | None = None):
        self.rows = RowDocuments(table, field, keep)

    def __len__(self) -> int:
        return 1

    def segments(self):
        yield from cut_segments(self._chunks())

    def _chunks(self):
        lines, size = [], 0
        for i, text in enumerate(self.rows):
            lines.append(text if i == 0 else "\n" + text)
            size += len(lines[-1])
            if size >= texts.SEGMENT_CHARS:
                yield "".join(lines)
                lines, size = [], 0
        yield "".join(lines)


def stream_splits(ds, settings: Settings) -> dict[str, RowDocuments]:
    names, field = settings.names, settings.text_field
    if names["train"] not in ds:
        raise DataError(f"dataset.split_names.train={names['train']!r} is not a split of {settings.path!r}; "
                        f"it has {sorted(ds.keys())}")
    n_val, n_test = settings.val_rows, settings.test_rows
    train = ds[names["train"]]
    return {"val": RowDocuments(train, field, skip=0, take=n_val),
            "test": RowDocuments(train, field, skip=n_val, take=n_test),
            "train": RowDocuments(train, field, skip=n_val + n_test)}


def splits_of(ds, settings: Settings) -> dict[str, RowDocuments | JoinedRows]:
    names, field = settings.names, settings.text_field
    available = sorted(ds.keys())
    if names["train"] not in available:
        raise DataError(f"dataset.split_names.train={names['train']!r} is not a split of {settings.path!r}; "
                        f"it has {available}")
    tables = {}
    for s in SPLITS:
        if names[s] in available:
            tables[s] = ds[names[s]]
            if field not in tables[s].column_names:
                raise DataError(f"dataset.text_field={field!r} is not a column of {settings.path!r} "
                                f"(its columns: {tables[s].column_names})")
    # each row a document (an end token between them), or the rows as the lines of one document
    documents = RowDocuments if settings.documents == "rows" else JoinedRows
    train = tables["train"]
    out, taken, order = {}, 0, None

    def kept(lo: int, hi: int) -> np.ndarray:  # the rows order[lo:hi] of the training split, as a bool per row
        mask = np.zeros(len(train), dtype=bool)
        mask[np.frombuffer(order, dtype=np.int64)[lo:hi]] = True
        return mask
    for s in ("val", "test"):  # a split the dataset lacks is cut from its training rows (seeded)
        if s in tables:
            out[s] = documents(tables[s], field)
            continue
        if order is None:  # 8 bytes a row (a list would hold an int object each: ~1 GB for 29M rows)
            order = array("q", range(len(train)))
            random.Random(settings.split_seed).shuffle(order)  # a list's permutation exactly
        n = max(1, round(getattr(settings, f"{s}_fraction") * len(train)))
        if taken + n >= len(train):
            raise DataError(f"{settings.path!r} has no {names[s]!r} split and its training split is too "
                            f"small to cut one from; name another split with dataset.split_names.{s}=...")
        out[s] = documents(train, field, kept(taken, taken + n))
        taken += n
        log.info("%s has no %r split: %d rows of its training split are the %s split (dataset.%s_fraction)",
                 settings.path, names[s], n, s, s)
    out["train"] = documents(train, field, kept(taken, len(train)) if taken else None)
    return out


def corpus(settings: Settings, cache_dir: Path) -> Corpus:
    """Keyed by the dataset's own fingerprints (``datasets`` keeps one per split, for the data on disk) and the
    settings that cut it, so a cache hit joins and hashes no text."""
    documents = settings.documents
    if documents not in ("joined", "rows"):
        raise DataError(f"dataset.documents={documents!r} must be joined or rows")
    if not settings.path:
        raise DataError("dataset.path is needed: a Hugging Face dataset's hub id or folder")
    if settings.streaming:
        if documents != "rows":
            raise DataError("dataset.streaming=true reads rows as they come: it needs dataset.documents=rows")
        def read():  # the stream is opened only to build the token cache: a cached corpus needs no network
            ds = load(settings.path, settings.hf_config, str(cache_dir / "hf"), streaming=True,
                      revision=settings.revision)
            return stream_splits(ds, settings)
        cut = [settings.revision, settings.split_names, settings.text_field, settings.val_rows, settings.test_rows]
        key = hashlib.sha256(repr(("stream", settings.path, settings.hf_config, cut)).encode()).hexdigest()[:16]
        return Corpus(key, read, {})
    ds = load(settings.path, settings.hf_config, str(cache_dir / "hf"))
    prints = {name: getattr(ds[name], "_fingerprint", None) for name in sorted(ds.keys())}
    if all(prints.values()):
        cut = [settings.split_names, settings.text_field, settings.val_fraction, settings.test_fraction,
               settings.split_seed]
        if documents != "joined":  # (the default keeps the keys of caches built before the setting existed)
            cut.append(documents)
        key = hashlib.sha256(repr((settings.path, settings.hf_config, prints, cut)).encode()).hexdigest()[:16]
        return Corpus(key, lambda: splits_of(ds, settings), {})
    splits = splits_of(ds, settings)  # no fingerprints (a plain mapping of tables): hash the text itself
    return Corpus(fingerprint(splits), lambda: splits, {})


SOURCE = corpus
