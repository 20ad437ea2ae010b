"""Sweeps that survive a bad job: each job records how it ended, and the sweep reports them all at the end.

Every run writes ``status.json`` in its folder (finished or failed, a one-line reason, the step reached, the
wall time). In a multirun a failing job -- bad config, out of memory, a loss that became NaN, any exception
-- is recorded there and in its W&B run (marked failed) and the sweep goes on with the next job;
``SweepSummary`` (a Hydra callback) prints every job's outcome when the sweep ends and exits non-zero if any
failed. A single run keeps its behaviour: one clear line and exit code 2 for bad input.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from attnlab import run_folder

log = logging.getLogger(__name__)
STATUS_FILE = run_folder.STATUS
DIRNAME_LIMIT = 120  # a job folder's name is built from its overrides; file systems stop at 255 bytes


def short_dirname(name: str) -> str:
    """A job's override string as a folder name: kept whole when short, else cut and made unique by a hash.
    A ``/`` (an override holding a path) becomes ``_``: a job's folder is always one level below its sweep's."""
    name = name.replace("/", "_")
    if len(name) <= DIRNAME_LIMIT:
        return name
    return f"{name[:DIRNAME_LIMIT - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("short_dirname", short_dirname, replace=True)  # used by hydra.sweep.subdir


def pretrained_name(init_from, default: str) -> str:
    """A run's model (or tokenizer) name as it ran: a model started from a Hugging Face folder or hub id has that
    model's shape and tokenizer, whatever the config groups' defaults say (a fine-tune of gpt2-mini is not
    ``small``/``char``): the folder's or hub id's last name; else ``default``."""
    source = str(init_from or "")
    if source.startswith("hf:"):
        return re.sub(r"[^\w.-]", "_", source[3:].rstrip("/").split("/")[-1]) or default
    if source and (Path(source).expanduser() / "config.json").is_file():
        return re.sub(r"[^\w.-]", "_", Path(source).expanduser().resolve().name) or default
    return default


OmegaConf.register_new_resolver("pretrained_name", pretrained_name, replace=True)  # run_name

_claimed: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """``path`` if this process is the one that creates it, else ``path_2``, ``path_3``, ...: two runs (or sweeps)
    started in the same second get two folders. The folder is created here, atomically (``mkdir`` fails when
    another process made it first); the answer is remembered, so resolving again gives the same folder (and
    OmegaConf's resolver cache carries it to a sweep's worker processes, as it does Hydra's ``now``)."""
    if path in _claimed:
        return _claimed[path]
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            n += 1
    _claimed[path] = str(candidate)
    return str(candidate)


OmegaConf.register_new_resolver("unique_dir", unique_dir, replace=True, use_cache=True)  # hydra.run/sweep.dir


def optuna_seed(seed: int, storage: str, study_name: str) -> int:
    """The Optuna sampler's seed for this session of a study: the run's seed plus the number of trials the study
    already holds, so a continued study draws new points instead of repeating its first ones. The SQLite file
    is read directly (read-only), before Optuna opens it."""
    prefix = "sqlite:///"
    path = str(storage)[len(prefix):] if str(storage).startswith(prefix) else None
    if not path or not os.path.isfile(path):
        return int(seed)
    import sqlite3
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            [n] = db.execute("SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE study_name = ?",
                             (str(study_name),)).fetchone()
    except sqlite3.Error:
        return int(seed)
    return int(seed) + int(n)


OmegaConf.register_new_resolver("optuna_seed", optuna_seed, replace=True)  # hparams_search/*: sampler.seed


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def write_status(output_dir: str | Path, status: str, step: int, started: float, reason: str = "",
                 metrics: dict | None = None, continued_in: str | None = None, earlier_seconds: float = 0.0) -> None:
    """How the run ended; ``started`` is its ``time.time()`` at start (the start and end times show which jobs of
    a parallel sweep ran at once); ``metrics``: the run's final numbers (val/ppl_best, test/ppl, ...).
    ``wall_seconds`` is the whole run's: ``earlier_seconds`` (the commands before a resume) plus this one's."""
    path = Path(output_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    ended = time.time()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "reason": reason, "step": step,
                               "wall_seconds": round(earlier_seconds + ended - started, 1),
                               **({"this_command_seconds": round(ended - started, 1)} if earlier_seconds else {}),
                               "started": datetime.fromtimestamp(started).isoformat(timespec="milliseconds"),
                               "ended": datetime.fromtimestamp(ended).isoformat(timespec="milliseconds"),
                               **({"metrics": metrics} if metrics else {}),
                               **({"continued_in": continued_in} if continued_in else {})},
                              indent=1))
    tmp.replace(path)


def earlier_wall_seconds(output_dir: str | Path) -> float:
    """The wall time a run folder's earlier commands recorded (0 when none or unreadable): a resume adds to it."""
    try:
        from attnlab import plain_yaml
        value = plain_yaml.load_json(Path(output_dir) / STATUS_FILE).get("wall_seconds")
    except (OSError, ValueError, AttributeError):
        return 0.0
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0.0


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def job_position() -> tuple[int, int | None] | None:
    """(this job's number from 1, the number of jobs in the sweep or None if unknown) in a multirun, else None."""
    if not is_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig
    hc = HydraConfig.get()
    total = None
    try:
        if hc.sweeper.get("n_trials"):  # Optuna: a fixed number of trials
            total = int(hc.sweeper.n_trials)
        else:  # the basic sweeper: the product of every swept list, from the sweep's own command line
            from hydra.core.override_parser.overrides_parser import OverridesParser
            task = list(OmegaConf.load(Path(hc.sweep.dir) / "multirun.yaml").hydra.overrides.task)
            task += [f"{k}={v}" for k, v in (hc.sweeper.get("params") or {}).items()]
            total = 1
            for o in OverridesParser.create().parse_overrides(task):
                total *= len(list(o.sweep_iterator())) if o.is_sweep_override() else 1
    except Exception:  # another sweeper or an unreadable sweep file: the position alone
        total = None
    return int(hc.job.num) + 1, total


def parallel_jobs() -> int:
    """How many jobs of this multirun the launcher runs at once (1 for Hydra's basic launcher)."""
    if not is_multirun():
        return 1
    from hydra.core.hydra_config import HydraConfig
    n = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n, int) or n == 1:
        return 1
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)  # joblib's convention: -1 = all CPUs


@contextlib.contextmanager
def cpu_share():
    """Under a parallel local launcher (joblib, n_jobs > 1), run this job on its share of the cores.

    The job holds one of n_jobs slot locks for its lifetime (the first free one, so jobs that start as others
    end never share a slot) and pins itself and torch's threads to that slot's cores: two jobs on two cores
    each get one core instead of both oversubscribing both."""
    n_jobs = parallel_jobs()
    if n_jobs == 1 or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    from hydra.core.hydra_config import HydraConfig
    import torch
    cores = sorted(os.sched_getaffinity(0))
    per_job = max(1, len(cores) // n_jobs)
    slot_dir = Path(HydraConfig.get().sweep.dir) / ".cpu_slots"
    slot_dir.mkdir(parents=True, exist_ok=True)
    handle, slot = None, 0
    while handle is None:  # a free slot exists whenever the launcher starts a job; retry while one is released
        for slot in range(n_jobs):
            f = open(slot_dir / f"slot{slot}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                handle = f
                break
            except OSError:
                f.close()
        else:
            time.sleep(0.1)
    mine = [cores[(slot * per_job + i) % len(cores)] for i in range(per_job)]
    threads_before = torch.get_num_threads()
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))
    log.info("parallel job %d of %d at once: cores %s", slot + 1, n_jobs, mine)
    try:
        yield mine
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads_before)
        handle.close()  # releases the slot


class SweepSummary(Callback):
    """Around a multirun: prepares the Optuna study's folder and checks the SLURM settings before anything is
    launched; at the end, one line per job (finished / failed, reason, folder), the best parameters of a
    search, and exit 1 if any job failed."""

    def on_multirun_start(self, config, **kwargs) -> None:
        n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
        if n_jobs is not None and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0):
            log.error("hydra.launcher.n_jobs=%r must be an integer >= 1, or negative (-1: one job per core)", n_jobs)
            sys.exit(2)
        n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
        if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
            log.error("hydra.sweeper.n_trials=%r must be an integer >= 1", n_trials)
            sys.exit(2)
        storage = str(config.hydra.sweeper.get("storage") or "")
        if storage.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        launcher = config.hydra.launcher
        if str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            gpus = OmegaConf.select(config, "hydra.launcher.gpus_per_node")
            if not isinstance(gpus, int) or gpus < 0:
                log.error("hydra/launcher=slurm: trainer.devices=%s; SLURM needs the number of GPUs per node "
                          "(an integer >= 0), e.g. trainer.devices=4", gpus)
                sys.exit(2)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # Hydra's subdir is <num>-<overrides> (short_dirname keeps it one level deep)
        job_number = lambda p: int(p.relative_to(sweep_dir).parts[0].split("-")[0])  # noqa: E731
        statuses = []
        for p in sorted(sweep_dir.glob(f"*/{STATUS_FILE}"), key=job_number):
            try:
                statuses.append((p.parent, json.loads(p.read_text())))
            except (OSError, ValueError):
                statuses.append((p.parent, {"status": "unknown", "reason": "status.json unreadable", "step": 0,
                                            "wall_seconds": 0.0}))
        failed = [(d, s) for d, s in statuses if s["status"] != "finished"]
        lines = [f"sweep {sweep_dir}: {len(statuses) - len(failed)} finished, {len(failed)} failed"]
        for d, s in statuses:
            best = (s.get("metrics") or {}).get("val/ppl_best")
            best = f"val ppl {best:8.3f}" if isinstance(best, (int, float)) else " " * 16
            where = d.relative_to(sweep_dir)
            where = f"{where} (resumed run: {s['continued_in']})" if s.get("continued_in") else where
            lines.append(f"  {s['status']:>8}  step {s['step']:>6}  {s['wall_seconds']:>7.1f}s  {best}  {where}"
                         + (f"\n            {s['reason']}" if s["reason"] else ""))
        results = sweep_dir / "optimization_results.yaml"  # written by the Optuna sweeper
        if results.exists():
            best = OmegaConf.load(results)
            lines.append(f"best {config.get('optimized_metric')} = {best.get('best_value')} with "
                         f"{dict(best.get('best_params', {}))} (saved in {results})")
        log.info("\n".join(lines))
        if failed:
            sys.exit(1)
