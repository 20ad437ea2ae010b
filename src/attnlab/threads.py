"""How many CPU threads torch uses, chosen from the cores that are free when a command starts.

torch's default is one thread per core. On a machine where other work holds some cores, every step then waits
for its slowest thread, which shares a core with that work: measured on 2 cores with two other processes
running, 2 threads trained at 0.73 it/s and 1 thread at 1.82 it/s (``bench/threads.py``, docs/results.md).
Every command (train, sample, evaluate, analyze, export, report, and the test suite) therefore counts the
processes that are running on the machine at its start and gives torch the cores left, at least one; it says
so in its first lines, and ``threads=N`` overrides it.
"""
from __future__ import annotations

import logging
import os
import statistics
import time

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or a sweep job's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def running_elsewhere(samples: int = 5, interval: float = 0.02) -> float:
    """How many other threads are running right now: the kernel's count of runnable threads
    (``/proc/loadavg``'s fourth field) less this one, the median of a few looks ~20 ms apart (one look catches a
    short-lived process). Where /proc is missing, the one-minute load average (which lags by a minute)."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        counts.append(max(0, running - 1))  # this thread is running as it reads
        if i + 1 < samples:
            time.sleep(interval)
    return float(statistics.median(counts))


def choose(requested: int | None = None, cores: int | None = None, others: float | None = None) -> tuple[int, str]:
    """(threads, why): ``requested`` when given; else the free cores, at least 1."""
    cores = usable_cores() if cores is None else cores
    if requested:
        return int(requested), f"threads={requested} given ({cores} cores)"
    others = running_elsewhere() if others is None else others
    free = max(1, min(cores, int(cores - others + 0.5)))
    busy = f", {others:g} busy with other work" if others >= 0.5 else ""
    return free, f"{free} of {cores} cores free{busy} (threads=N to change)"


def apply(requested: int | None = None) -> int:
    """Set torch's threads for this command and say how many in one line; returns the number."""
    import torch
    n, why = choose(requested)
    torch.set_num_threads(n)
    log.info("torch uses %d CPU thread%s: %s", n, "" if n == 1 else "s", why)
    return n
