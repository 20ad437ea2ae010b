"""Synthetic recall tasks, where attention types visibly differ within minutes on a CPU.

Each example is a line of characters (one token each with ``tokenizer=char``) whose answers sit at known
positions, each with the *distance* the attention must reach back to find it (the position that predicts the
answer - the position of what it must copy). Training counts the loss on the answers only
(``data.loss_on=answers``, as Zoology labels them): every other next token is noise no model can predict.

* ``copy``: dots, one capital letter X somewhere, and later a ``?`` followed by X. The ``?`` must attend to X,
  ``distance`` tokens back. One layer can do it (X is the only capital letter). Chance: 1/26.
* ``mqar``: multi-query associative recall as Zoology (Arora et al. 2023, "Zoology: measuring and improving
  recall in efficient language models") defines it: ``pairs`` key-value pairs first, keys and values drawn
  without replacement from disjoint halves of a ``vocab_size`` vocabulary (key ids 1 .. V/2 - 1, value ids
  V/2 .. V - 1; id 0 is the filler), then each key once more at a query slot, the slot's gap after the pairs
  drawn from Zoology's power law p(g) ~ a g^(a-1) (a = ``power_a``; a = 0.01: most queries come right after
  the pairs, 1.0: uniform). The answer is the key's value. Chance is 1/(V/2); a model that copies *some*
  value of the example scores 1/pairs (the trivial level), so only accuracy above 1/pairs shows recall.
  As in Zoology's tensors, the input after a query key is a filler, not the value: the value is the target
  there (``Example.expected``), so no answer shows in the text before a later query (which would let a model
  score H(pairs)/pairs = 52% at 4 pairs by copying a value not yet asked for).
  Token ids are written as characters (id i is chr(0x4E00 + i), a CJK block of 20,992 code points; the
  filler is '.'), so the char tokenizer, the token cache and every command handle the task unchanged.

* ``passkey``: the passkey retrieval test (Mohtashami and Jaggi 2023, "Landmark Attention", section 4.2), at
  character scale: a repeated filler sentence, a ``digits``-digit pass key stated once at a random depth
  (``key=31415;``), and at the end the question ``key?`` whose answers are the digits. The first digit has to be
  fetched from the depth where the key was stated (its distance is reported); the later ones can follow it.
  Chance: 1/10 a digit.

A window of w keys (Longformer) sees back w - 1 positions: beyond that an answer is out of its reach, whatever
it learns. Each generator is seeded and needs nothing else: the same seed gives the same examples everywhere.
"""
from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple

from attnlab.errors import ConfigError

FILLER, QUERY = ".", "?"
KEYS = string.ascii_uppercase
TOKEN_BASE = 0x4E00  # mqar's token id i is the character chr(TOKEN_BASE + i) (id 0 is the filler instead)
MAX_VOCAB = 0x9FFF - TOKEN_BASE + 1  # the CJK unified ideographs block: 20,992 ids


class Example(NamedTuple):
    text: str
    answers: list[tuple[int, int]]  # (position p, distance): the target of position p - 1 is an answer, which the
    #   attention must fetch from ``distance`` positions before p - 1
    expected: str  # the answers' characters, in the order of ``answers`` (the text at p may be a filler: MQAR)


@dataclass(frozen=True)
class Copy:
    """Copy the one capital letter after a ``?``, from a log-uniform distance back."""
    name: ClassVar[str] = "copy"

    def check(self, length: int) -> None:
        if length < 3:
            raise ConfigError(f"a copy example needs at least 3 characters, got {length}")

    def example(self, rng: random.Random, length: int) -> Example:
        """``length`` characters: X at p, ``?`` at p + d, X again at p + d + 1; d log-uniform in [1, length - 2]
        (every scale of distance gets its share: as many examples within 8 tokens as between 8 and 64)."""
        d = min(length - 2, int(math.exp(rng.uniform(0, math.log(length - 1)))))
        p = rng.randint(0, length - 2 - d)
        text = [FILLER] * length
        text[p] = text[p + d + 1] = rng.choice(KEYS)
        text[p + d] = QUERY
        return Example("".join(text), [(p + d + 1, d)], text[p])

    @property
    def chance(self) -> float:
        return 1 / len(KEYS)

    @property
    def trivial(self) -> float:
        return 1 / len(KEYS)  # without reaching X, every capital letter is as likely


@dataclass(frozen=True)
class MQAR:
    """Zoology's multi-query associative recall (see the module's docstring)."""
    pairs: int = 4  # key-value pairs per example (Zoology's figure 2: 4 at length 64 ... 64 at 512)
    vocab_size: int = 8192  # keys from the first half, values from the second (Zoology's figure 2: 8,192)
    power_a: float = 0.01  # the query gaps' power law (Zoology's train_power_a and test_power_a)
    random_fillers: bool = False  # fillers drawn from the whole vocabulary (Zoology's random_non_queries; its
    #   figure 2 runs without them)
    name: ClassVar[str] = "mqar"

    def check(self, length: int) -> None:
        if self.pairs < 1:
            raise ConfigError(f"mqar needs pairs >= 1, got {self.pairs}")
        if not 2 * self.pairs + 2 <= self.vocab_size <= MAX_VOCAB or self.vocab_size % 2:
            raise ConfigError(f"mqar's vocab_size={self.vocab_size} must be even and in [{2 * self.pairs + 2}, "
                             f"{MAX_VOCAB}] (keys and values each draw {self.pairs} distinct ids from half of it)")
        if not 0 < self.power_a <= 1:
            raise ConfigError(f"mqar's power_a={self.power_a} must be in (0, 1] (1: uniform gaps)")
        if self.slots(length) < self.pairs:
            raise ConfigError(f"mqar with {self.pairs} pairs needs at least {4 * self.pairs + 1} characters, got "
                             f"{length}")

    def slots(self, length: int) -> int:
        """Query slots after the pairs: a key at 2 pairs + 2 g and its value right after, g in [0, slots)."""
        return (length - 2 * self.pairs) // 2

    def gap_weights(self, length: int) -> list[float]:
        """Zoology's power law over the slots: p(g) proportional to a (g + 1)^(a - 1), normalised."""
        a = self.power_a
        w = [a * (g + 1) ** (a - 1) for g in range(self.slots(length))]
        total = sum(w)
        return [x / total for x in w]

    def example(self, rng: random.Random, length: int) -> Example:
        half, n = self.vocab_size // 2, self.pairs
        keys = rng.sample(range(1, half), n)  # distinct keys (id 0 is the filler)
        values = rng.sample(range(half, self.vocab_size), n)  # distinct values
        gaps = _weighted_sample(rng, self.gap_weights(length), n)  # key i is asked at slot gaps[i]
        ids = [rng.randrange(self.vocab_size) if self.random_fillers else 0 for _ in range(length)]
        answers = []
        for i, (k, v) in enumerate(zip(keys, values)):
            ids[2 * i], ids[2 * i + 1] = k, v
        for i, g in enumerate(gaps):
            q = 2 * n + 2 * g
            ids[q] = keys[i]  # the query; the slot after it keeps its filler: the value is only the target
            answers.append((q + 1, q - (2 * i + 1), values[i]))  # the query key at q reaches back to 2i + 1
        text = "".join(FILLER if t == 0 else chr(TOKEN_BASE + t) for t in ids)
        answers.sort()
        return Example(text, [(p, d) for p, d, _ in answers], "".join(chr(TOKEN_BASE + v) for _, _, v in answers))

    @property
    def chance(self) -> float:
        return 1 / (self.vocab_size - self.vocab_size // 2)

    @property
    def trivial(self) -> float:
        return 1 / self.pairs  # copying any value of the example


@dataclass(frozen=True)
class Passkey:
    """Find a pass key hidden at a random depth in filler text (see the module's docstring)."""
    digits: int = 5  # the key's length (the paper's keys are 5-digit numbers)
    name: ClassVar[str] = "passkey"
    FILLER_TEXT: ClassVar[str] = "the grass is green. the sky is blue. the sun is yellow. here we go. "

    def check(self, length: int) -> None:
        if not 1 <= self.digits <= 20:
            raise ConfigError(f"passkey's digits={self.digits} must be in [1, 20]")
        if length < 2 * (self.digits + 5):
            raise ConfigError(f"passkey with {self.digits} digits needs at least {2 * (self.digits + 5)} characters, "
                              f"got {length}")

    def example(self, rng: random.Random, length: int) -> Example:
        """``length`` characters: filler, ``key=<digits>;`` starting at a uniform depth, filler, and ``key?<digits>``
        ending the example; the answers are the final digits."""
        key = "".join(rng.choice(string.digits) for _ in range(self.digits))
        stated, asked = f"key={key};", f"key?{key}"
        start = rng.randint(0, length - len(asked) - len(stated))  # the depth where the key is stated
        text = list((self.FILLER_TEXT * (length // len(self.FILLER_TEXT) + 1))[:length])
        text[start:start + len(stated)] = stated
        text[length - len(asked):] = asked
        first, hidden = length - self.digits, start + 4  # the answers' positions, the stated key's first digit
        answers = [(first + j, (first + j - 1) - (hidden + j)) for j in range(self.digits)]
        return Example("".join(text), answers, key)

    @property
    def chance(self) -> float:
        return 1 / 10

    @property
    def trivial(self) -> float:
        return 1 / 10  # without finding the key every digit is as likely


def _weighted_sample(rng: random.Random, weights: list[float], k: int) -> list[int]:
    """k distinct indices, drawn one after another with probability proportional to ``weights`` among those
    left (what numpy's ``choice(replace=False, p=...)`` does, which Zoology uses)."""
    left, chosen = list(range(len(weights))), []
    for _ in range(k):
        i = rng.choices(range(len(left)), weights=[weights[j] for j in left])[0]
        chosen.append(left.pop(i))
    return chosen


TASKS = {"copy": Copy, "mqar": MQAR, "passkey": Passkey}


def get_task(name: str, **settings) -> Copy | MQAR | Passkey:
    """The task ``name`` with its settings (each task takes only its own: ``task_settings``)."""
    if name not in TASKS:
        raise ConfigError(f"unknown dataset.task {name!r}; valid: {sorted(TASKS)}")
    try:
        return TASKS[name](**settings)
    except TypeError:
        raise ConfigError(f"dataset.task={name} takes the settings {task_settings(name) or 'none'}, got "
                         f"{sorted(settings)}") from None


def task_settings(name: str) -> list[str]:
    return [f.name for f in fields(TASKS[name])] if name in TASKS else []


def examples(task: Copy | MQAR | Passkey, n: int, length: int, seed: int) -> list[Example]:
    """n examples of ``length`` characters, the same for the same arguments on any machine."""
    task.check(length)
    rng = random.Random(f"{task.name}/{seed}")  # string seeds hash the same in every process (unlike hash())
    return [task.example(rng, length) for _ in range(n)]
