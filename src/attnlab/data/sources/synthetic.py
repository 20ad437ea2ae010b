"""Synthetic recall tasks (``data/tasks.py``: copy, mqar), generated from a seed: no download, no files.

Every example is ``length - 1`` characters and the end token, so with ``length`` = the model's context each
training window is exactly one example (the windows are cut at multiples of the context). The splits are drawn
with different seeds. The corpus also says where the answers are (``answers``): with ``data.loss_on=answers``
(the default for these tasks) the loss counts those targets only; ``callbacks.TaskAccuracy`` scores fresh
examples by distance during training."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnlab.data.corpus import DataError
from attnlab.data.sources import COMMON as SOURCE_KEYS, Corpus
from attnlab.data.tasks import TASKS, examples, get_task, task_settings

GENERATORS = 2  # the generators' version, in the token cache's key: 2 = MQAR's values only as targets (2026-12-04)
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}  # added to dataset.seed: the splits never share an example
COUNTS = ("length", "seed", "train_examples", "val_examples", "test_examples")  # the source's own settings
LEGACY = {"copy": ("pairs",)}  # copy.yaml carried an unused pairs: 1 until 2026-12-04; such run folders still read


@dataclass(frozen=True)
class Settings:
    task: str  # copy | mqar (data/tasks.py)
    length: int  # characters per example, its end token included: the model's context (one window each)
    seed: int = 0  # the examples' seed; the splits add SPLIT_SEEDS to it, so they never share an example
    train_examples: int = 20000
    val_examples: int = 256
    test_examples: int = 256
    task_settings: dict = field(default_factory=dict)  # the task's own settings (MQAR: pairs, vocab_size, ...)

    @classmethod
    def from_dataset(cls, dataset: dict) -> "Settings":
        """The settings of a dataset config: the counts checked here, the task's own settings by its dataclass."""
        name = dataset.get("task")
        if name not in TASKS:
            raise DataError(f"dataset.task={name!r} must be one of {sorted(TASKS)}")
        own = task_settings(name)
        unknown = sorted(k for k in dataset if k not in SOURCE_KEYS and k != "task" and k not in COUNTS
                         and k not in own and k not in LEGACY.get(name, ()))
        if unknown:
            raise DataError(f"dataset.task={name} has no setting {unknown[0]!r}; its settings: {sorted(COUNTS) + own}")
        for k in COUNTS:
            value = dataset.get(k, 0 if k == "seed" else None)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DataError(f"dataset.{k}={value!r} must be a whole number >= 0")
        return cls(task=name, **{k: dataset[k] for k in COUNTS if k in dataset},
                   task_settings={k: dataset[k] for k in own if k in dataset})

    def make_task(self):
        """The task object, its settings checked (one line when they are wrong)."""
        try:
            return get_task(self.task, **self.task_settings)
        except ValueError as e:
            raise DataError(str(e)) from None


def task_of(dataset: dict):
    """The task object of a dataset config (its settings checked), or DataError in one line."""
    return Settings.from_dataset(dataset).make_task()


def split_seed(settings: Settings | dict, split: str) -> int:
    seed = settings.seed if isinstance(settings, Settings) else settings.get("seed", 0)
    return seed * 1000 + (SPLIT_SEEDS[split] if split in SPLIT_SEEDS else len(SPLIT_SEEDS))


def corpus(settings: Settings, cache_dir: Path) -> Corpus:
    task = settings.make_task()
    length = settings.length
    try:
        task.check(length - 1)  # too short for its pairs: one line, before any work
    except ValueError as e:
        raise DataError(f"dataset.task={settings.task}: {e} (dataset.length={length})") from None

    def split(name: str):
        return examples(task, getattr(settings, f"{name}_examples"), length - 1, split_seed(settings, name))

    def read() -> dict[str, list[str]]:
        return {name: [e.text for e in split(name)] for name in SPLIT_SEEDS}

    def answers() -> dict[str, tuple[np.ndarray, int, str]]:
        """Per split: the token positions whose target is an answer (the target of position p - 1 is the token
        slot p), the stream's length (one token per character, each example followed by the end token), and the
        answers' characters in that order (the target there, whatever the text holds: MQAR's is a filler)."""
        out = {}
        for name in SPLIT_SEEDS:
            batch = split(name)
            pos = [n * length + p for n, e in enumerate(batch) for p, _ in e.answers]
            out[name] = (np.asarray(pos, dtype=np.int64), len(batch) * length, "".join(e.expected for e in batch))
        return out
    counts = [getattr(settings, k) for k in COUNTS]
    key = hashlib.sha256(repr([GENERATORS, task, *counts]).encode()).hexdigest()[:16]
    return Corpus(key, read, {"task": task.name}, answers)


SOURCE = corpus
