"""``hydra/launcher=local``: the jobs of a sweep N at a time on this machine, each in a process of its own.

Why not joblib's pool: a worker killed by the system (out of memory, ``kill -9``) breaks a joblib pool, which
then stops every other running job and never starts the later ones. Here each job is one process; a job
that dies is recorded in its ``status.json`` ("killed by signal 9 ...") and the sweep goes on.

Stopping: Ctrl-C reaches every job (one process group); each saves ``last.ckpt`` and records "interrupted",
the launcher starts no new job and waits for the running ones to stop. If the launcher itself is killed,
its jobs get SIGTERM (Linux's parent-death signal), which Lightning turns into the same orderly stop.

Each job pins itself to its share of the cores (``attnlab.sweep.cpu_share``), as under joblib.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger("attnlab.launcher")
STOP_WAIT_S = 120  # after Ctrl-C, how long running jobs get to save and stop before they are killed


ConfigStore.instance().store(group="hydra/launcher", name="local", provider="attnlab", node={
    "_target_": "hydra_plugins.attnlab_plugins.launcher.LocalLauncher",
    "n_jobs": 2,  # jobs at once; -1: one per core
})


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when the launcher dies (a killed launcher leaves no orphans)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _task(ref: tuple[str, str], script: str | None):
    """The task function in this (spawned) process. The script's own module is loaded here, after the
    parent-death signal is set (``launch`` keeps multiprocessing from importing it first: train.py's imports take
    10-20 s, in which a killed launcher's job would live on), as ``__mp_main__``; its ``main`` is Hydra's
    decorated one, which calls the task directly when given a config."""
    module, name = ref
    if module != "__main__":
        return getattr(importlib.import_module(module), name)
    if not hasattr(sys.modules.get("__mp_main__"), name) and script:  # (spawn aliases its bare __main__ there)
        import runpy
        import types
        mod = types.ModuleType("__mp_main__")
        mod.__dict__.update(runpy.run_path(script, run_name="__mp_main__"))
        sys.modules["__mp_main__"] = mod
    return getattr(sys.modules["__mp_main__"], name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_in_child(payload: bytes, results, script: str | None = None) -> None:
    _die_with_parent()
    # SIGTERM (the launcher died, or a scheduler stops the job) stops a job like Ctrl-C does, even before
    # training starts; Lightning adds its own handler in front of this one once it runs
    signal.signal(signal.SIGTERM, _interrupt)
    import pickle
    hydra_context, sweep_config, task_ref, singleton_state = pickle.loads(payload)  # written by cloudpickle
    swallowed = []  # Ctrl-C landing in a callback of the import machinery is printed as "Exception ignored" with
    # a traceback and then dropped by Python; here it is kept and acted on like any other interrupt

    def keep_interrupts(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            swallowed.append(unraisable.exc_value)
        else:
            sys.__unraisablehook__(unraisable)
    sys.unraisablehook = keep_interrupts
    try:
        task_function = _task(task_ref, script)  # the project's imports: seconds, in which Ctrl-C may come
        if swallowed:
            raise KeyboardInterrupt
    except KeyboardInterrupt:  # stopped before it started: said in one line and recorded, no traceback
        from attnlab import sweep  # (its resolvers name the job's folder)
        setup_globals()
        Singleton.set_state(singleton_state)
        HydraConfig.instance().set_config(sweep_config)
        out = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        sweep.write_status(out, "interrupted", 0, time.time(), "interrupted while it was starting")
        results.put((int(sweep_config.hydra.job.num), None, "interrupted while it was starting"))
        sys.exit(130)
    sys.unraisablehook = sys.__unraisablehook__  # started: Lightning's own interrupt handling from here
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    try:
        value = ret.return_value if ret.status == JobStatus.COMPLETED else None
    except Exception:
        value = None
    error = None if ret.status == JobStatus.COMPLETED else repr(ret._return_value)[:500]
    results.put((int(sweep_config.hydra.job.num), value, error))


class _main_not_imported:
    """While a job's process is being started: multiprocessing's spawn would import the launching script (as
    ``__mp_main__``) before the job's own code runs; hiding its file lets the child set its parent-death signal
    and its interrupt handling first, then load the script itself (``_task``)."""

    def __enter__(self):
        main = sys.modules["__main__"]
        self.saved = {k: main.__dict__.pop(k) for k in ("__file__",) if k in main.__dict__}
        self.spec, main.__spec__ = getattr(main, "__spec__", None), None
        return self

    def __exit__(self, *exc) -> None:
        main = sys.modules["__main__"]
        main.__dict__.update(self.saved)
        main.__spec__ = self.spec


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class LocalLauncher(Launcher):
    def __init__(self, n_jobs: int = 2) -> None:
        self.n_jobs = n_jobs
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _parallel(self) -> int:
        n = self.n_jobs
        return max(1, n if n > 0 else (os.cpu_count() or 1) + 1 + n)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        parallel = self._parallel()
        log.info("Launching %d jobs, %d at a time, each in its own process; sweep output dir: %s",
                 len(job_overrides), parallel, sweep_dir)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id, cfg.hydra.job.num = f"{cfg.hydra.job.name}_{idx}", idx
            HydraConfig.instance().set_config(cfg)
            out = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            jobs.append((idx, list(overrides), cfg, out))
            log.info("\t#%d : %s", idx, " ".join(overrides))

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or CUDA state inherited
        results = ctx.SimpleQueue()
        state = Singleton.get_state()
        task_ref = (self.task_function.__module__, self.task_function.__qualname__)
        script = getattr(sys.modules["__main__"], "__file__", None)  # loaded by the child itself (see _task)
        pending, running, done = list(jobs), {}, {}
        stopping = False
        deadline = None
        while pending or running:
            try:
                while pending and len(running) < parallel and not stopping:
                    idx, overrides, cfg, out = pending.pop(0)
                    # cloudpickle: Hydra's state holds OmegaConf's resolver closures, which pickle cannot write
                    payload = cloudpickle.dumps((self.hydra_context, cfg, task_ref, state))
                    p = ctx.Process(target=_run_in_child, name=f"job{idx}", args=(payload, results, script))
                    with _main_not_imported():
                        p.start()
                    running[idx] = (p, overrides, cfg, out, time.time())
                while not results.empty():
                    idx, value, error = results.get()
                    done[idx] = (value, error)
                for idx, (p, overrides, cfg, out, started) in list(running.items()):
                    if p.exitcode is None:
                        continue
                    p.join()
                    del running[idx]
                    while not results.empty():
                        j, value, error = results.get()
                        done[j] = (value, error)
                    if idx not in done and p.exitcode == 130:  # interrupted: the job recorded it itself
                        done[idx] = (None, "interrupted")
                    if idx not in done:  # the process died without a word: killed, out of memory, a crash
                        reason = (f"the job's process was killed by {_signal_name(p.exitcode)} (the system's "
                                  f"out-of-memory killer does this)" if p.exitcode < 0
                                  else f"the job's process exited with code {p.exitcode}")
                        from attnlab import sweep
                        sweep.write_status(out, "failed", _step_of(out), started, reason)
                        log.error("job %d (%s): %s; the sweep goes on", idx, " ".join(overrides), reason)
                        done[idx] = (None, reason)
                if stopping and running and deadline is not None and time.time() > deadline:
                    for p, *_ in running.values():
                        p.kill()
                time.sleep(0.2)
            except KeyboardInterrupt:
                if not stopping:
                    log.error("interrupted: no new job starts; waiting up to %d s for the %d running ones to save "
                              "and stop (Ctrl-C again kills them)", STOP_WAIT_S, len(running))
                    stopping, deadline = True, time.time() + STOP_WAIT_S
                    pending.clear()
                else:
                    for p, *_ in running.values():
                        p.kill()
        if stopping:
            log.error("sweep %s interrupted: %d jobs done or stopped, %d never started", sweep_dir, len(done),
                      len(jobs) - len(done))
            sys.exit(130)
        returns = []
        for idx, overrides, cfg, out in jobs:
            value, error = done.get(idx, (None, "never ran"))
            ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=None, working_dir=str(out), task_name=cfg.hydra.job.name)
            # a failed job returns None, as one that fails in-process does (train.py records it in status.json):
            # the sweeper goes on and the summary reports it; Optuna records the trial as failed
            ret.status = JobStatus.COMPLETED
            ret.return_value = value if error is None else None
            returns.append(ret)
        return returns


def _step_of(out: Path) -> int:
    """The step of the job's newest checkpoint (0 without one): how far a killed job got, at least."""
    try:
        import json
        return int(json.loads((out / "status.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        pass
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return 0
    try:
        from attnlab.checkpoints import safe_load
        return int(safe_load(ckpts[-1]).get("global_step", 0))
    except Exception:
        return 0
