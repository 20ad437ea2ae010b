"""One error layer for every command: a bad setting, file or checkpoint is one line and exit code 2, an
interrupt is one line and exit code 130, and inside a sweep a failing job is recorded and the sweep goes on.

``train.py``, ``sample.py`` and ``evaluate.py`` run their Hydra task through ``run_task``; ``report.py`` through
``run_plain``.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any, Callable

from attnlab import sweep, threads
from attnlab.errors import BUG_REPORT, ConfigError, TrainingDiverged, UserError

log = logging.getLogger("attnlab")
USER_ERRORS = (UserError,)  # the input is wrong: say which and what is allowed (attnlab.errors)
EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
# Lightning 2.6 under torch >= 2.10 warns on every run that a torch helper it calls is deprecated: nothing a
# user can act on, so the commands keep it out of their output (tests and library use still see it)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def run_task(task: Callable[[Any], Any], cfg, records_status: bool = False) -> Any:
    """Run one Hydra job. ``records_status``: the task writes its own status.json (train does); otherwise it is
    written here for sweep jobs, so the sweep's summary lists every job."""
    started, multirun = time.time(), sweep.is_multirun()
    try:
        if not records_status and sweep.parallel_jobs() == 1:  # (train sets its own; a parallel job is pinned)
            threads.apply(checked_threads(cfg.get("threads")))
        result = task(cfg)
    except KeyboardInterrupt:
        log.error("interrupted")
        from pathlib import Path
        if multirun and (not records_status or not (Path(cfg.paths.output_dir) / sweep.STATUS_FILE).exists()):
            sweep.write_status(cfg.paths.output_dir, "interrupted", 0, started, "interrupted before it started")
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as e:
        if multirun:  # recorded in the job's status.json; the sweep goes on and reports it at the end
            log.error("job failed: %s", e)
            if not records_status:
                sweep.write_status(cfg.paths.output_dir, "failed", 0, started, sweep.one_line(e))
            return None
        log.error("%s", e)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as e:  # out of memory, a diverged loss, a bug: one job's failure does not end a sweep
        if not multirun:
            say_what_failed(e)
            raise
        log.exception("job failed: %s", sweep.one_line(e))
        if not records_status:
            sweep.write_status(cfg.paths.output_dir, "failed", 0, started, sweep.one_line(e))
        return None
    if multirun and not records_status:
        sweep.write_status(cfg.paths.output_dir, "finished", 0, started)
    return result


def say_what_failed(e: BaseException) -> None:
    """One line before the traceback of an exception that is not bad input: out of memory, or a bug."""
    import torch
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        log.error("out of memory (%s): lower data.batch_size, model.context or the model size, or use "
                  "trainer.precision=bf16-mixed on a GPU", sweep.one_line(e))
    elif not isinstance(e, TrainingDiverged):
        log.error("%s; %s", sweep.one_line(e), BUG_REPORT)


def checked_threads(value) -> int | None:
    """``threads=`` as given on a command line: null, or a whole number >= 1 (one line otherwise)."""
    from attnlab.schema import RULES
    if RULES["threads"].problem(value):
        raise ConfigError(f"threads={value!r} must be {RULES['threads'].allowed()}")
    return value


def run_plain(name: str, task: Callable[[], Any]) -> Any:
    """A command without Hydra (report.py): the same one line and exit codes."""
    try:
        threads.apply()
        return task()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as e:
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as e:
        say_what_failed(e)
        raise
