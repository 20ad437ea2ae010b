"""Callbacks the sweep tests put into jobs (importable by the train.py subprocesses through PYTHONPATH)."""
import lightning as L
import torch


class RaiseOOM(L.Callback):
    """Raises an out-of-memory error at ``step`` (a step past the run's end never fires)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


class FailInJob(L.Callback):
    """Raises in the multirun job numbered ``job`` (Hydra's job.num), so a search has one failing trial."""

    def __init__(self, job: int):
        self.job = job

    def on_train_start(self, trainer, pl_module):
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.get().job.num == self.job:
            raise RuntimeError(f"job {self.job} fails on purpose")


class KillSelfInJob(L.Callback):
    """SIGKILLs its own process at ``step`` in the multirun job numbered ``job``: what the system's
    out-of-memory killer does to a job."""

    def __init__(self, job: int, step: int = 2):
        self.job, self.step = job, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import os
        import signal
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.get().job.num == self.job and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
