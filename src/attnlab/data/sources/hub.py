"""A Hugging Face dataset through ``datasets`` (read from its cache offline; one clear line when unreachable).

``split_names`` maps the project's splits to the dataset's own (wikitext: validation); ``text_field`` is its
text column. A dataset without a validation or test split gets one cut from its training split
(``val_fraction`` / ``test_fraction``, seeded by ``split_seed``), and says so."""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

from attnlab.data.corpus import SPLITS, DataError, fingerprint
from attnlab.data.sources import Corpus

log = logging.getLogger(__name__)
DEFAULT_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def load(path: str, name: str | None, cache_dir: str):
    try:
        import datasets
        return datasets.load_dataset(path, name, cache_dir=cache_dir)
    except Exception as e:  # network errors come as many types; all mean the same to the user
        raise DataError(
            f"could not load the Hugging Face dataset {path!r}{'/' + name if name else ''} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            f"The hub is not reachable from here and it is not in the cache {cache_dir!r}. "
            f"To use local text instead: python train.py dataset=text_files dataset.path=/path/to/texts "
            f"(a .txt file, a folder or a glob)") from e


def splits_of(ds, settings: dict) -> dict[str, list[str]]:
    names = {**DEFAULT_SPLIT_NAMES, **(settings.get("split_names") or {})}
    field = settings.get("text_field", "text")
    available = sorted(ds.keys())
    if names["train"] not in available:
        raise DataError(f"dataset.split_names.train={names['train']!r} is not a split of {settings.get('path')!r}; "
                        f"it has {available}")
    rows = {}
    for s in SPLITS:
        if names[s] in available:
            table = ds[names[s]]
            if field not in table.column_names:
                raise DataError(f"dataset.text_field={field!r} is not a column of {settings.get('path')!r} "
                                f"(its columns: {table.column_names})")
            rows[s] = list(table[field])
    train = rows["train"]
    order = list(range(len(train)))
    random.Random(settings.get("split_seed", 1234)).shuffle(order)
    taken = 0
    for s in ("val", "test"):
        if s in rows:
            continue
        n = max(1, round(settings.get(f"{s}_fraction", 0.05) * len(train)))
        if taken + n >= len(train):
            raise DataError(f"{settings.get('path')!r} has no {names[s]!r} split and its training split is too "
                            f"small to cut one from; name another split with dataset.split_names.{s}=...")
        chosen = set(order[taken:taken + n])
        taken += n
        rows[s] = [train[i] for i in sorted(chosen)]
        log.info("%s has no %r split: %d rows of its training split are the %s split (dataset.%s_fraction)",
                 settings.get("path"), names[s], n, s, s)
    if taken:
        held = set(order[:taken])
        rows["train"] = [r for i, r in enumerate(train) if i not in held]
    return {s: ["\n".join(rows[s])] for s in SPLITS}


def corpus(settings: dict, cache_dir: Path) -> Corpus:
    """Keyed by the dataset's own fingerprints (``datasets`` keeps one per split, for the data on disk) and the
    settings that cut it, so a cache hit joins and hashes no text."""
    ds = load(settings["path"], settings.get("hf_config"), str(cache_dir / "hf"))
    prints = {name: getattr(ds[name], "_fingerprint", None) for name in sorted(ds.keys())}
    if all(prints.values()):
        cut = [settings.get(k) for k in ("split_names", "text_field", "val_fraction", "test_fraction", "split_seed")]
        key = hashlib.sha256(repr((settings["path"], settings.get("hf_config"), prints, cut)).encode()).hexdigest()[:16]
        return Corpus(key, lambda: splits_of(ds, settings), {})
    splits = splits_of(ds, settings)  # no fingerprints (a plain mapping of tables): hash the text itself
    return Corpus(fingerprint(splits), lambda: splits, {})


SOURCE = corpus
