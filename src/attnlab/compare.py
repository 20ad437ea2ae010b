"""Comparisons over seeds: runs that differ only in their seed form a group; a group's figure is its mean with
the spread (min–max) and the 95% t-interval of the mean; two groups differ only when an interval says so.

One run ranks nothing: on the recall tasks learning is a sharp transition whose step varies from seed to seed,
so a single run per type orders the types by luck. ``python train.py -m ... seed=1,2,3`` gives each type the same
seeds (initial weights and data order), so each seed is a paired comparison: the interval of two groups'
difference is taken over their per-seed differences when they share their seeds (Student's t), else from the
two groups' means and spreads (Welch). With 3 seeds t(0.975, 2) = 4.30: only a consistent gap is a difference.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

LEVEL = 0.95
# Student's t quantile t(0.975, df) for df = 1 .. 30; beyond 30, the normal's 1.96 is within 4%
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: float) -> float:
    """Student's t quantile for a two-sided 95% interval (df rounded down: a little wider, never narrower)."""
    if df < 1:
        return math.inf
    return T975[int(df) - 1] if df < 31 else 1.96


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan)


@dataclass(frozen=True)
class Spread:
    """A figure over seeds: mean, min–max and the 95% t-interval of the mean (Student's t, n - 1 degrees of
    freedom: with 3 seeds it is wide, as it must be; a percentile bootstrap of 3 values is far narrower than
    95%, and called identical groups different a quarter of the time in a simulation)."""
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
        return t_interval(self.values)

    def text(self, fmt: str = "{:.3g}") -> str:
        """``mean [min–max]`` (one value: the value and 'one seed')."""
        if self.n == 1:
            return f"{fmt.format(self.values[0])} (one seed)"
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}–{fmt.format(self.high)}]"


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of the mean of ``values`` (Student's t); one value: (v, v), none: (nan, nan)."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    mean, sd = _mean_sd(values)
    half = t975(len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


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
        how = f"paired over {self.seeds} seeds" if self.paired else f"unpaired (Welch), {self.seeds}+ seeds"
        return (f"{self.a} − {self.b}: {self.metric} {self.mean:+.3g} (95% interval {self.interval[0]:+.3g} … "
                f"{self.interval[1]:+.3g}, {how}): **{self.verdict}**")


def difference(a: str, a_values: dict[int, float], b: str, b_values: dict[int, float], metric: str,
               higher_is_better: bool) -> Difference:
    """a − b from per-seed values ({seed: value}): when both ran the same seeds, the t-interval of the per-seed
    differences (paired); else Welch's interval of the difference of the means. Every difference equal (no
    spread at all, e.g. 100% against 90% in every seed) gives a zero-width interval at that difference."""
    shared = sorted(set(a_values) & set(b_values))
    if shared and len(shared) == len(a_values) == len(b_values):
        d = [a_values[s] - b_values[s] for s in shared]
        return Difference(a, b, metric, sum(d) / len(d), t_interval(d), True, len(d), higher_is_better)
    va, vb = list(a_values.values()), list(b_values.values())
    mean = sum(va) / len(va) - sum(vb) / len(vb)
    if len(va) < 2 or len(vb) < 2:
        return Difference(a, b, metric, mean, (mean, mean), False, min(len(va), len(vb)), higher_is_better)
    (_, sa), (_, sb) = _mean_sd(va), _mean_sd(vb)
    qa, qb = sa * sa / len(va), sb * sb / len(vb)
    se = math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / ((qa * qa / (len(va) - 1)) + (qb * qb / (len(vb) - 1))) if se > 0 else len(va) + len(vb) - 2
    half = t975(df) * se
    return Difference(a, b, metric, mean, (mean - half, mean + half), False, min(len(va), len(vb)), higher_is_better)


@dataclass
class Group:
    """Runs that differ only in their seed."""
    label: str
    key: str
    members: list = field(default_factory=list)  # report.Run objects, in seed order

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.members]

    def runs_with(self, metric: str) -> list[tuple[int, float]]:
        """(seed, value) of every member that has the metric (a run without a seed counts as seed -1)."""
        out = []
        for r in self.members:
            v = getattr(r, metric, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append((r.seed if r.seed is not None else -1, float(v)))
        return out

    def values(self, metric: str) -> dict[int, float]:
        """{seed: value} for pairing by seed; a seed run twice (a rerun) gives the mean of its runs."""
        by_seed: dict[int, list[float]] = {}
        for seed, v in self.runs_with(metric):
            by_seed.setdefault(seed, []).append(v)
        return {s: sum(v) / len(v) for s, v in by_seed.items()}

    @property
    def repeated_seeds(self) -> list[int]:
        seeds = [s for s in self.seeds if s is not None]
        return sorted({s for s in seeds if seeds.count(s) > 1})

    def spread(self, metric: str) -> Spread | None:
        """Over every member's value (a repeated seed counts each run)."""
        v = self.runs_with(metric)
        return Spread(tuple(x for _, x in sorted(v))) if v else None


def group_runs(runs: Iterable, key_of, label_of) -> list[Group]:
    """Groups of runs with the same ``key_of(run)``, in order of their first run; members sorted by seed. Labels
    that would repeat get the settings that tell their groups apart when the keys are JSON configs (runs started
    one by one, not as a sweep: ``full model.positions=rope``), else a number."""
    groups: dict[str, Group] = {}
    for r in runs:
        k = key_of(r)
        if k not in groups:
            groups[k] = Group(label_of(r), k)
        groups[k].members.append(r)
    by_label: dict[str, list[Group]] = {}
    for g in groups.values():
        g.members.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
        by_label.setdefault(g.label, []).append(g)
    for label, same in by_label.items():
        apart = _settings_apart([g.key for g in same]) if len(same) > 1 else None
        for i, g in enumerate(same):
            if apart is not None:
                g.label = f"{label} {apart[i]}"
            elif i:
                g.label = f"{label} #{i + 1}"
    return list(groups.values())


def _settings_apart(keys: list[str], most: int = 3) -> list[str] | None:
    """For keys that are JSON configs, each one's values of the (at most ``most``) settings that differ among them,
    as ``a.b=v``; None when the keys are not such configs or nothing tells them apart."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    try:
        configs = [flat(json.loads(k)) for k in keys]
    except (ValueError, TypeError, AttributeError):
        return None
    differing = sorted(k for k in set().union(*configs) if len({json.dumps(c.get(k), default=str) for c in configs}) > 1)
    if not differing:
        return None
    return [" ".join(f"{k}={c.get(k)}" for k in differing[:most]) for c in configs]
