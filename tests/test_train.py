"""End to end: debug runs lower the loss and log the metrics; resume continues at the right step."""
import csv
import math
from pathlib import Path

import pytest
import torch

from attnlab.attention import ATTENTION_TYPES
from attnlab.checkpoints import safe_load
from attnlab.train import train
from test_config import run_train


def metrics_of(output_dir: Path) -> list[dict]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows, key):
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def test_debug_run_lowers_loss_and_logs_everything(make_cfg):
    cfg = make_cfg(["mode=debug"])
    metrics = train(cfg)
    rows = metrics_of(Path(cfg.paths.output_dir))
    losses = column(rows, "train/loss")
    assert losses[-1] < losses[0] - 0.5
    init, expected = column(rows, "init/loss")[0], column(rows, "init/expected_loss")[0]
    assert abs(init - expected) < 0.3  # the loss at initialisation is ~ln(vocab)
    for key in ("train/ppl", "val/ppl", "grad_norm/total", "grad_norm/block0", "memory/rss", "memory_estimate/total",
                "throughput/tokens_per_s", "lr/pg1", "test/ppl"):
        assert column(rows, key), key
    # the epoch perplexity covers every training batch of the epoch, not just the logged steps
    epoch_ppl = column(rows, "train/ppl_epoch")
    assert len(epoch_ppl) == 2 and epoch_ppl[1] < epoch_ppl[0]
    # perplexity is exp of the same mean loss
    assert math.isclose(metrics["val/ppl"], math.exp(metrics["val/loss"]), rel_tol=1e-4)
    assert (Path(cfg.paths.output_dir) / "attention_full_layer0.png").exists()


@pytest.mark.parametrize("attention", sorted(ATTENTION_TYPES))  # every registered type, from the registry
def test_each_attention_type_trains(make_cfg, attention):
    cfg = make_cfg(["mode=debug", f"attention={attention}", "test_after_fit=false", "trainer.max_epochs=1"])
    train(cfg)
    losses = column(metrics_of(Path(cfg.paths.output_dir)), "train/loss")
    assert losses[-1] < losses[0] - 0.3


def test_validate_first_scores_the_starting_weights_apart_from_the_runs_best(make_cfg):
    cfg = make_cfg(["mode=debug", "validate_first=true", "test_after_fit=false", "trainer.max_epochs=1"])
    metrics = train(cfg)
    start = metrics["start/val_ppl"]
    assert math.isclose(math.log(start), metrics["start/val_loss"], rel_tol=1e-4)
    assert start > 2 * metrics["val/ppl_best"]  # random weights score far worse than the trained ones ...
    assert metrics["val/ppl_best"] == pytest.approx(metrics["val/ppl"])  # ... and are not the run's best
    rows = metrics_of(Path(cfg.paths.output_dir))
    assert column(rows, "val/ppl")[0] == pytest.approx(start, rel=1e-4)  # the curve starts at the start


def test_own_blocked_flash_trains(make_cfg):
    cfg = make_cfg(["mode=debug", "attention=flash", "attention.backend=blocked", "test_after_fit=false",
                    "trainer.max_epochs=1"])
    train(cfg)
    losses = column(metrics_of(Path(cfg.paths.output_dir)), "train/loss")
    assert losses[-1] < losses[0] - 0.3


def _resume_cfg(make_cfg, name, max_steps, extra=()):
    return make_cfg(["mode=debug", f"trainer.max_steps={max_steps}", "trainer.max_epochs=-1",
                     "++callbacks.last_checkpoint._target_=attnlab.callbacks.LastCheckpoint",
                     "++callbacks.last_checkpoint.dirpath=${paths.checkpoint_dir}",
                     "++callbacks.last_checkpoint.every_n_train_steps=5", "trainer.limit_val_batches=0",
                     "test_after_fit=false", "trainer.log_every_n_steps=1", "scheduler.total_steps=20",
                     "++callbacks.rich_progress._target_=attnlab.callbacks.RunProgressBar", *extra], name)


@pytest.mark.parametrize("stop", [7, 10, 15])  # max_steps between saves, mid-epoch on a save, the epoch end
def test_resume_continues_at_the_right_step_and_data_position(make_cfg, stop, monkeypatch, recwarn):
    torch.use_deterministic_algorithms(False)
    from attnlab.callbacks import RunProgressBar
    bar_states, batch_end = [], RunProgressBar.on_train_batch_end

    def record_bar(self, trainer, *args):  # (count shown, total shown) of the training bar after each batch
        batch_end(self, trainer, *args)
        task = self.progress.tasks[self.train_progress_bar_id]
        bar_states.append((int(task.completed), int(task.total)))
    monkeypatch.setattr(RunProgressBar, "on_train_batch_end", record_bar)
    # one run of 20 steps straight ...
    straight = _resume_cfg(make_cfg, "straight", 20)
    train(straight)
    # ... equals `stop` steps, stop, then resume from last.ckpt to 20
    first = _resume_cfg(make_cfg, "first", stop)
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == stop
    resumed = _resume_cfg(make_cfg, "resumed", 20, [f"ckpt_path={last}"])
    bar_states.clear()
    train(resumed)
    # the bar counts on from the saved batch, against the epoch's own end (not "15/13" after a mid-epoch resume)
    assert bar_states[0][0] == stop % 15 + 1 and all(done <= total for done, total in bar_states), bar_states
    assert bar_states[-1][0] == bar_states[-1][1]
    # the data position is restored by the datamodule: no warning that the loader cannot resume
    assert not [w for w in recwarn if "dataloader is not resumable" in str(w.message)]
    assert Path(resumed.paths.output_dir) == Path(first.paths.output_dir)  # the run goes on in its own folder
    rows = metrics_of(Path(first.paths.output_dir))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == list(range(20))  # one log: the first part, then from the saved step on (not from 0)
    assert len(column(rows, "init/loss")) == 1  # a resumed run is not at initialisation: no second check
    a = safe_load(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt")
    b = safe_load(last)  # the resumed job goes on writing into its own checkpoint folder
    assert a["global_step"] == b["global_step"] == 20
    for k in a["state_dict"]:  # same data, same order, same optimizer state: same weights
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_overfit_mode_memorises_one_batch(make_cfg):
    cfg = make_cfg(["mode=overfit", "trainer.max_steps=200"])
    train(cfg)
    losses = column(metrics_of(Path(cfg.paths.output_dir)), "train/loss")
    assert losses[-1] < 0.3, losses[-5:]


@pytest.mark.slow
def test_multirun_runs_each_job_in_its_own_folder(tmp_path):
    r = run_train("-m", "attention=full", "seed=1,2", "mode=debug", "trainer.max_epochs=1", "test_after_fit=false",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "outputs" / "multirun").glob("*/*") if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0-attention=full,seed=1") and jobs[1].startswith("1-attention=full,seed=2"), jobs
    for job in (tmp_path / "outputs" / "multirun").glob("*/*-attention*"):
        assert (job / "csv" / "metrics.csv").exists() and (job / ".hydra" / "config.yaml").exists()
    out = r.stdout + r.stderr
    assert out.count("Total params") == 1  # the model summary once per sweep, not once per job
    for boilerplate in ("GPU available", "TPU available", "litlogger", "Seed set to", "LeafSpec"):
        assert boilerplate not in out, boilerplate


def test_the_progress_bar_shows_one_time_left_the_runs():
    from attnlab.callbacks import RunProgressBar
    columns = RunProgressBar().configure_columns(None)
    assert not [c for c in columns if type(c).__name__ == "CustomTimeColumn"]  # no second, per-epoch estimate


def test_default_wandb_logger_goes_offline_and_groups_by_attention(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    cfg = make_cfg(["mode=debug", "logger=wandb", "attention=longformer", "trainer.max_epochs=1",
                    "test_after_fit=false"])
    from attnlab.train import build_loggers
    [wandb_logger, csv_logger] = build_loggers(cfg, None)
    run = wandb_logger.experiment
    assert run.settings.mode in ("offline", "dryrun")  # no key, no network: offline (wandb calls it dryrun)
    assert run.group == "longformer" and "longformer" in run.tags and "tiny" in run.tags
    assert run.config["attention"]["window"] == cfg.attention.window  # the full resolved config
    assert Path(cfg.paths.output_dir, "wandb").is_dir()
    run.finish()


def test_memory_estimate_attention_term_tracks_what_autograd_keeps():
    """The estimate's attention line grows with the length as the memory autograd really keeps for backward
    does: ~16x at 4x the length for the dense backend, ~4x for the blocked one."""
    from attnlab.attention import build_attention, get_backend
    from attnlab.memory import estimate
    from test_attention import saved_bytes
    for att in (build_attention({"name": "full"}), build_attention({"name": "flash", "backend": "blocked"})):
        dense = get_backend(att.resolved_backend("cpu")).materialises_scores
        est = lambda T: estimate(10**6, 1, T, 64, 1, 2, 100, dense, block=att.block_size).attention  # noqa: E731
        measured = saved_bytes(att, 1024, d=32, H=2) / saved_bytes(att, 256, d=32, H=2)
        assert est(1024) / est(256) == pytest.approx(measured, rel=0.3), (att.name, est(1024) / est(256), measured)


def test_each_job_of_a_sweep_gets_its_own_wandb_run(make_cfg, monkeypatch):
    """Hydra runs a multirun's jobs one after another in one process: each must get its own W&B run, with its
    own config, in its own folder, finished when the job ends (not the first job's run, reused)."""
    import wandb
    from attnlab import wandb_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = []
    real = wandb_run.build_logger

    def recording(cfg, lg_cfg, resume_id, floor=-1):
        logger = real(cfg, lg_cfg, resume_id, floor)
        runs.append((logger.experiment.id, dict(logger.experiment.config["attention"]), logger.experiment.dir))
        return logger
    monkeypatch.setattr(wandb_run, "build_logger", recording)
    dirs = []
    for attention in ("full", "longformer"):
        cfg = make_cfg(["mode=debug", "logger=wandb", f"attention={attention}", "trainer.max_epochs=1",
                        "trainer.limit_train_batches=3", "test_after_fit=false"], f"job-{attention}")
        train(cfg)
        dirs.append(cfg.paths.output_dir)
        assert wandb.run is None  # finished at the end of its job
    assert len({r[0] for r in runs}) == 2
    assert [r[1]["name"] for r in runs] == ["full", "longformer"]
    for (_, _, run_dir), job_dir in zip(runs, dirs):
        assert run_dir.startswith(job_dir)


def test_wandb_mode_offline_makes_no_network_call_even_with_a_key(monkeypatch):
    from attnlab import wandb_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb_run.socket, "create_connection", lambda *a, **k: pytest.fail("network touched"))
    assert wandb_run.decide_offline("auto") is True


def test_wandb_self_hosted_server_is_the_one_checked(monkeypatch):
    from attnlab import wandb_run
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.example.internal:8080")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    seen = []
    monkeypatch.setattr(wandb_run.socket, "create_connection", lambda addr, timeout: seen.append(addr) or _Closed())
    assert wandb_run.decide_offline("auto") is False
    assert seen == [("wandb.example.internal", 8080)]


class _Closed:
    def close(self):
        pass


def test_a_run_says_its_threads_and_warns_when_the_machine_is_busy(make_cfg, monkeypatch, caplog):
    import logging
    from attnlab.train import set_threads
    before = torch.get_num_threads()
    try:
        from attnlab import threads
        monkeypatch.setattr(threads, "usable_cores", lambda: 2)
        monkeypatch.setattr(threads, "running_elsewhere", lambda: 2.0)  # both cores busy with other work
        with caplog.at_level(logging.INFO):
            set_threads(2, "cpu")
        assert torch.get_num_threads() == 2 and "torch uses 2 CPU threads: threads=2 given" in caplog.text
        assert "only 1 of 2 cores free, 2 busy with other work" in caplog.text and "threads=1 would match" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO):
            set_threads(1, "cpu")  # what the warning said: no warning again
        assert "would match" not in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO):
            set_threads(None, "cpu")  # none given: the free core
        assert torch.get_num_threads() == 1 and "torch uses 1 CPU thread: 1 of 2 cores free" in caplog.text
    finally:
        torch.set_num_threads(before)


QUIET = ["mode=debug", "trainer.max_epochs=-1", "test_after_fit=false", "callbacks.model_summary=null",
         "callbacks.attention_picture=null", "callbacks.sample_texts=null"]


def test_the_final_weights_are_validated_when_the_last_scheduled_validation_came_earlier(make_cfg):
    """max_steps 10, a validation every 4 steps: validations after steps 4, 8 and 10, and the final perplexity
    in the metrics (the summary's "final val perplexity") is the one of step 10."""
    cfg = make_cfg([*QUIET, "trainer.max_steps=10", "trainer.val_check_interval=4"])
    metrics = train(cfg)
    rows = metrics_of(Path(cfg.paths.output_dir))
    validated = [int(r["step"]) + 1 for r in rows if r.get("val/ppl")]  # logged at the step before global_step
    assert validated == [4, 8, 10]
    assert metrics["val/ppl"] == pytest.approx(column(rows, "val/ppl")[-1])
    again = make_cfg([*QUIET, "trainer.max_steps=8", "trainer.val_check_interval=4"], "aligned")
    train(again)
    assert [int(r["step"]) + 1 for r in metrics_of(Path(again.paths.output_dir)) if r.get("val/ppl")] == [4, 8]


def test_a_resumed_runs_wall_time_is_the_whole_runs(make_cfg):
    import json
    cfg = make_cfg([*QUIET, "trainer.max_steps=4"], "2026-01-01_00-00-00")
    train(cfg)
    status = Path(cfg.paths.output_dir) / "status.json"
    first = json.loads(status.read_text())
    status.write_text(json.dumps({**first, "wall_seconds": 1000.0}))  # as if the first part had run 1,000 s
    resumed = make_cfg([*QUIET, "trainer.max_steps=8", f"ckpt_path={cfg.paths.output_dir}"], "2026-01-01_01-00-00")
    train(resumed)
    after = json.loads(status.read_text())  # the run's own folder, where the resume writes
    assert after["step"] == 8 and 1000 < after["wall_seconds"] < 1000 + 600
    assert after["this_command_seconds"] == pytest.approx(after["wall_seconds"] - 1000, abs=0.2)


def test_the_test_perplexity_is_one_number_and_says_what_it_counts(make_cfg, tmp_path):
    """The summary's test perplexity, status.json's and evaluate.py's over the same batches are the same number,
    and the summary says how many targets it counts and that the split was cut (mode=debug: 4 batches)."""
    import json
    from attnlab.evaluate import evaluate
    from attnlab.train import summary_table
    from test_commands import command_cfg
    cfg = make_cfg(["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "callbacks.model_summary=null",
                    "callbacks.attention_picture=null", "callbacks.sample_texts=null",
                    "++callbacks.last_checkpoint._target_=attnlab.callbacks.LastCheckpoint",
                    "++callbacks.last_checkpoint.dirpath=${paths.checkpoint_dir}"])
    metrics = train(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())["metrics"]
    assert status["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-5) and status["test/targets"] == 4 * 16 * 64
    assert "over 4,096 targets, trainer.limit_test_batches" in summary_table(status, 3, 1.0, Path(cfg.paths.output_dir) / "checkpoints", limited_test=True)
    result = evaluate(command_cfg("evaluate", [f"run={cfg.paths.output_dir}", "split=test", "limit_batches=4",
                                               "batch_size=16"], tmp_path / "eval"))
    assert result["targets"] == 4096 and result["ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-5)
