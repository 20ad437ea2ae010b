"""Synthetic long-range tasks, where attention types visibly differ within minutes on a CPU.

Each example is a line of characters whose answers sit at known positions, each with the *distance* the
attention must reach back to find it (query position - position of the token to copy):

* ``copy``: dots, one capital letter X somewhere, and later a ``?`` followed by X. The ``?`` must attend to X,
  ``distance`` tokens back. One layer can do it (X is the only capital letter).
* ``mqar``: multi-query associative recall (the Zoology study's MQAR): ``pairs`` key-value pairs first
  (capital key, small-letter value), then each key once more among dots, followed by its value. The value
  must be copied from right after the key's first occurrence (an induction head: two layers).

Answers are drawn uniformly from 26 letters, so chance is 1/26. A window of w keys (Longformer) sees back
w - 1 positions: beyond that an answer is out of its reach, whatever it learns. Each generator is seeded
and needs nothing else: the same seed gives the same examples everywhere.
"""
from __future__ import annotations

import math
import random
import string
from typing import Callable, NamedTuple

FILLER, QUERY = ".", "?"
KEYS, VALUES = string.ascii_uppercase, string.ascii_lowercase
CHANCE = 1 / 26


class Example(NamedTuple):
    text: str
    answers: list[tuple[int, int]]  # (position of an answer character, distance the attention must reach)


def copy(rng: random.Random, length: int, pairs: int = 1) -> Example:
    """``length`` characters: X at p, ``?`` at p + d, X again at p + d + 1; d log-uniform in [1, length - 2]
    (every scale of distance gets its share: as many examples within 8 tokens as between 8 and 64)."""
    if length < 3:
        raise ValueError(f"a copy example needs at least 3 characters, got {length}")
    d = min(length - 2, int(math.exp(rng.uniform(0, math.log(length - 1)))))
    p = rng.randint(0, length - 2 - d)
    text = [FILLER] * length
    text[p] = text[p + d + 1] = rng.choice(KEYS)
    text[p + d] = QUERY
    return Example("".join(text), [(p + d + 1, d)])


def mqar(rng: random.Random, length: int, pairs: int = 8) -> Example:
    """``pairs`` key-value pairs at the start, then every key once more (in random order, at random even
    offsets among dots) followed by its value."""
    slots = list(range(2 * pairs, length - 1, 2))  # where a query (key, value) may start
    if pairs < 1 or len(slots) < pairs:
        raise ValueError(f"mqar with {pairs} pairs needs at least {4 * pairs + 1} characters, got {length}")
    keys = rng.sample(KEYS, pairs)
    values = [rng.choice(VALUES) for _ in keys]
    text = [FILLER] * length
    for i, (k, v) in enumerate(zip(keys, values)):
        text[2 * i], text[2 * i + 1] = k, v
    answers = []
    for i, q in zip(rng.sample(range(pairs), pairs), sorted(rng.sample(slots, pairs))):
        text[q], text[q + 1] = keys[i], values[i]
        answers.append((q + 1, q - (2 * i + 1)))  # the query key at q reaches back to the value at 2i + 1
    return Example("".join(text), answers)


TASKS: dict[str, Callable[..., Example]] = {"copy": copy, "mqar": mqar}


def get_task(name: str) -> Callable[..., Example]:
    if name not in TASKS:
        raise ValueError(f"unknown dataset.task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


def examples(task: str, n: int, length: int, seed: int, pairs: int = 8) -> list[Example]:
    """n examples of ``length`` characters, the same for the same arguments on any machine."""
    rng = random.Random(f"{task}/{seed}")  # string seeds hash the same in every process (unlike hash())
    make = get_task(task)
    return [make(rng, length, pairs) for _ in range(n)]
