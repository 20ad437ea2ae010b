"""Comparisons over seeds: runs that differ only in their seed form a group; a group's figure is its mean with
the spread (min–max) and a bootstrap 95% interval of the mean; two groups differ only when an interval says so.

One run ranks nothing: on the recall tasks learning is a sharp transition whose step varies from seed to seed,
so a single run per type orders the types by luck. ``python train.py -m ... seed=1,2,3`` gives each type the same
seeds (initial weights and data order), so each seed is a paired comparison: the interval of two groups'
difference is taken over their per-seed differences when they share their seeds, else over independent
resamples of each.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

RESAMPLES = 10_000  # bootstrap resamples: the interval's ends move by < 1% of the spread between reruns
LEVEL = 0.95


@dataclass(frozen=True)
class Spread:
    """A figure over seeds: mean, min–max and a bootstrap interval of the mean (percentile method)."""
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def interval(self) -> tuple[float, float]:
        return bootstrap_interval(self.values)

    def text(self, fmt: str = "{:.3g}") -> str:
        """``mean [min–max]`` (one value: the value and 'one seed')."""
        if self.n == 1:
            return f"{fmt.format(self.values[0])} (one seed)"
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}–{fmt.format(self.high)}]"


def bootstrap_interval(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded: the same numbers give the same interval).
    With n values the resampled means take at most C(2n-1, n) values: at n = 3 the interval is close to min–max,
    which is what three seeds can say."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


@dataclass
class Difference:
    """Group a minus group b on one metric, with its interval and what it says."""
    a: str
    b: str
    metric: str
    mean: float
    interval: tuple[float, float]
    paired: bool
    seeds: int
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        lo, hi = self.interval
        if self.seeds < 2:
            return "one seed: no comparison"
        if lo > 0 or hi < 0:
            better = self.a if (lo > 0) == self.higher_is_better else self.b
            return f"{better} better"
        return "not distinguishable"

    def text(self) -> str:
        how = f"paired over {self.seeds} seeds" if self.paired else f"unpaired, {self.seeds}+ seeds"
        return (f"{self.a} − {self.b}: {self.metric} {self.mean:+.3g} (95% interval {self.interval[0]:+.3g} … "
                f"{self.interval[1]:+.3g}, {how}): **{self.verdict}**")


def difference(a: str, a_values: dict[int, float], b: str, b_values: dict[int, float], metric: str,
               higher_is_better: bool) -> Difference:
    """a − b from per-seed values ({seed: value}): paired when both have the same seeds, else unpaired."""
    shared = sorted(set(a_values) & set(b_values))
    if shared and len(shared) == len(a_values) == len(b_values):
        d = [a_values[s] - b_values[s] for s in shared]
        return Difference(a, b, metric, sum(d) / len(d), bootstrap_interval(d), True, len(d), higher_is_better)
    va, vb = list(a_values.values()), list(b_values.values())
    rng = random.Random(0)
    diffs = sorted(sum(rng.choice(va) for _ in va) / len(va) - sum(rng.choice(vb) for _ in vb) / len(vb)
                   for _ in range(RESAMPLES))
    mean = sum(va) / len(va) - sum(vb) / len(vb)
    interval = (diffs[int((1 - LEVEL) / 2 * RESAMPLES)], diffs[int((1 + LEVEL) / 2 * RESAMPLES)])
    return Difference(a, b, metric, mean, interval, False, min(len(va), len(vb)), higher_is_better)


@dataclass
class Group:
    """Runs that differ only in their seed."""
    label: str
    key: str
    members: list = field(default_factory=list)  # report.Run objects, in seed order

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.members]

    def values(self, metric: str) -> dict[int, float]:
        """{seed: value} of the members that have the metric (a run without a seed counts as seed -1)."""
        out = {}
        for r in self.members:
            v = getattr(r, metric, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[r.seed if r.seed is not None else -1] = float(v)
        return out

    def spread(self, metric: str) -> Spread | None:
        v = self.values(metric)
        return Spread(tuple(v[s] for s in sorted(v))) if v else None


def group_runs(runs: Iterable, key_of, label_of) -> list[Group]:
    """Groups of runs with the same ``key_of(run)``, in order of their first run; members sorted by seed. Labels
    that would repeat get a number."""
    groups: dict[str, Group] = {}
    for r in runs:
        k = key_of(r)
        if k not in groups:
            groups[k] = Group(label_of(r), k)
        groups[k].members.append(r)
    seen: dict[str, int] = {}
    for g in groups.values():
        g.members.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g.label = f"{g.label} #{seen[g.label]}"
    return list(groups.values())
