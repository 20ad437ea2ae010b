"""Callbacks whose arithmetic a user reads off a dashboard: it has to be right."""
from types import SimpleNamespace

import torch

from attnlab import callbacks


def test_training_tokens_per_second_leave_the_validation_time_out(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    mon = callbacks.ThroughputMonitor(log_every_n_steps=4)
    logged = []
    module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda m, **kw: logged.append(m))
    trainer = SimpleNamespace(global_step=0, world_size=1)
    batch = (torch.zeros(2, 50, dtype=torch.long),)  # 100 tokens a step
    for step in range(1, 5):
        mon.on_train_batch_start(trainer, module, batch, step - 1)
        clock[0] += 0.1  # a training step: 0.1 s
        trainer.global_step = step
        mon.on_train_batch_end(trainer, module, None, batch, step - 1)
        if step == 2:  # a 10 s validation inside the window
            mon.on_validation_start(trainer, module)
            clock[0] += 10.0
            mon.on_validation_end(trainer, module)
    assert len(logged) == 1
    assert abs(logged[0]["throughput/tokens_per_s"] - 400 / 0.4) < 1e-6  # not 400 / 10.4
    assert abs(logged[0]["time/train_s"] - 10.4) < 1e-6  # wall-clock curves still include it


def test_progress_bar_of_a_step_bounded_run_names_its_steps_not_epoch_minus_two():
    bar = callbacks.RunProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=2000)
    assert bar._get_train_description(0).strip() == "Epoch 0 (2,000 steps)"
    bar._trainer = SimpleNamespace(max_epochs=10, max_steps=-1)
    assert bar._get_train_description(3).strip() == "Epoch 3/9"


def test_the_peak_memory_restarts_for_each_job_of_a_process():
    """A sweep's jobs in one process: each job's peak RSS starts again at its own start (VmHWM reset), not the
    high-water mark of the jobs before it."""
    import numpy as np
    from attnlab.memory import peak_rss_bytes, reset_peak_rss
    big = np.ones(300 * 2 ** 20 // 8)  # 300 MiB, touched
    del big
    before = peak_rss_bytes()
    assert reset_peak_rss()
    assert peak_rss_bytes() < before - 200 * 2 ** 20


def test_a_runs_tokens_per_s_is_the_median_after_the_warm_up_window():
    from attnlab.callbacks import run_tokens_per_s
    assert run_tokens_per_s([10.0, 100.0, 300.0, 200.0]) == 200.0  # the first (warm-up) window left out
    assert run_tokens_per_s([50.0]) == 50.0 and run_tokens_per_s([]) is None
