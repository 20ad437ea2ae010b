"""Sweeps that survive a bad job: each job records how it ended, and the sweep reports them all at the end.

Every run writes ``status.json`` in its folder (finished or failed, a one-line reason, the step reached, the
wall time). In a multirun a failing job -- bad config, out of memory, a loss that became NaN, any exception
-- is recorded there and in its W&B run (marked failed) and the sweep goes on with the next job;
``SweepSummary`` (a Hydra callback) prints every job's outcome when the sweep ends and exits non-zero if any
failed. A single run keeps its behaviour: one clear line and exit code 2 for bad input.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def write_status(output_dir: str | Path, status: str, step: int, seconds: float, reason: str = "") -> None:
    path = Path(output_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "reason": reason, "step": step, "wall_seconds": round(seconds, 1)},
                              indent=1))
    tmp.replace(path)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


class SweepSummary(Callback):
    """At the end of a multirun: one line per job (finished / failed, reason, folder); exit 1 if any failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        job_number = lambda p: int(p.parent.name.split("-")[0])  # noqa: E731  Hydra's subdir: <num>-<overrides>
        statuses = [(p.parent, json.loads(p.read_text()))
                    for p in sorted(sweep_dir.glob(f"*/{STATUS_FILE}"), key=job_number)]
        failed = [(d, s) for d, s in statuses if s["status"] != "finished"]
        lines = [f"sweep {sweep_dir}: {len(statuses) - len(failed)} finished, {len(failed)} failed"]
        for d, s in statuses:
            lines.append(f"  {s['status']:>8}  step {s['step']:>6}  {s['wall_seconds']:>7.1f}s  {d.name}"
                         + (f"\n            {s['reason']}" if s["reason"] else ""))
        log.info("\n".join(lines))
        if failed:
            sys.exit(1)
