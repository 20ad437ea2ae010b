"""Synthetic long-range tasks (``data/tasks.py``: copy, mqar), generated from a seed: no download, no files.

Every example is ``length - 1`` characters and the end token, so with ``length`` = the model's context each
training window is exactly one example (the windows are cut at multiples of the context). The splits are drawn
with different seeds; ``callbacks.TaskAccuracy`` scores fresh examples by distance during training."""
from __future__ import annotations

import hashlib
from pathlib import Path

from attnlab.data.corpus import DataError
from attnlab.data.sources import Corpus
from attnlab.data.tasks import TASKS, examples

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}  # added to dataset.seed: the splits never share an example
SETTINGS = ("task", "length", "pairs", "seed", "train_examples", "val_examples", "test_examples")


def corpus(settings: dict, cache_dir: Path) -> Corpus:
    task = settings.get("task")
    if task not in TASKS:
        raise DataError(f"dataset.task={task!r} must be one of {sorted(TASKS)}")
    for k in SETTINGS[1:]:
        if not isinstance(settings.get(k), int) or isinstance(settings.get(k), bool) or settings[k] < 0:
            raise DataError(f"dataset.{k}={settings.get(k)!r} must be a whole number >= 0")
    length, pairs = settings["length"], settings["pairs"]
    try:
        examples(task, 1, length - 1, 0, pairs)  # too short for its pairs: one line, before any work
    except ValueError as e:
        raise DataError(f"dataset={settings.get('name')}: {e} (dataset.length={length}, dataset.pairs={pairs})") from None

    def read() -> dict[str, list[str]]:
        return {split: [e.text for e in examples(task, settings[f"{split}_examples"], length - 1,
                                                 settings["seed"] * 1000 + offset, pairs)]
                for split, offset in SPLIT_SEEDS.items()}
    key = hashlib.sha256(repr([settings.get(k) for k in SETTINGS]).encode()).hexdigest()[:16]
    return Corpus(key, read, {"task": task})


SOURCE = corpus
