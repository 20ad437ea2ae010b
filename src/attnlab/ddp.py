"""Multi-process (DDP) training launched from Hydra.

Lightning starts ranks 1..N-1 by running the command line again (``sys.argv``) in the run's folder. In a
multirun that command line is the whole sweep (``-m attention=full,flash``, or ``hparams_search=...`` whose
config sets ``hydra.mode: MULTIRUN``), so each child process would start a sweep of its own instead of
joining its job. Here the children run *this job*: the job's own overrides, as a single run, in the job's
folder. Single runs get the same command Lightning would build.
"""
from __future__ import annotations

import contextlib
import os
import sys

# Hydra's flags that take a value: kept for the children (they choose the config), unlike -m / --multirun
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def child_command(local_rank: int) -> tuple[list[str], str]:
    """The command and working directory for DDP rank ``local_rank`` of the running Hydra job."""
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg in _FLAGS_WITH_VALUE and i + 1 < len(args):
            command += [arg, args[i + 1]]
        elif arg.split("=", 1)[0] in _FLAGS_WITH_VALUE:
            command.append(arg)
    command += list(hc.overrides.task)  # this job's values (a sweep's or a search's), not the sweep's lists
    folder = str(hc.runtime.output_dir).replace("'", "\\'")
    command += [f"hydra.run.dir='{folder}'",  # quoted: sweep folders hold '=' and ','
                "hydra.mode=RUN", f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null"]  # rank 0 already wrote the job's .hydra/ config
    return command, get_original_cwd()


# what Lightning's launcher writes into the launching process's environment (and reads as "already launched")
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def job():
    """One job's multi-process run: its children run this job (``child_command``); at the end its process
    group is closed and the launch variables Lightning set in this process are removed, so the next job of a
    sweep in this process launches its own children instead of waiting for the last job's, which are gone.
    Variables set before the job (torchrun, SLURM) are left alone."""
    from attnlab.lightning_internals import launch_children_with
    launch_children_with(child_command)
    before = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
