"""Callbacks: last checkpoint, loss at initialisation, gradient norm, memory (estimate vs measured), throughput
(tokens/s, MFU), attention pictures, sample texts."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
import torch

from attnlab import lightning_internals, memory, run_folder
from attnlab.attention import get_backend
from attnlab.errors import ConfigError, TrainingDiverged
from attnlab.memory import peak_rss_bytes, rss_bytes

log = logging.getLogger(__name__)

# dense bf16 tensor-core peak in FLOP/s, for MFU; matched on the device name
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def log_now(trainer, metrics: dict[str, float]) -> None:
    """Log outside the hooks where LightningModule.log is allowed (e.g. on_fit_start)."""
    if trainer.is_global_zero:
        for lg in trainer.loggers:
            lg.log_metrics({k: float(v) for k, v in metrics.items()}, step=trainer.global_step)


class LastCheckpoint(L.Callback):
    """``last.ckpt`` every ``every_n_train_steps`` steps and every ``every_n_minutes`` minutes from the first step
    on, at every epoch end, when training ends and when it is interrupted (Ctrl-C, SIGTERM), whether or not a
    validation has run yet: a crash loses at most N steps or M minutes. (Ranking the best checkpoint is
    BestCheckpoint's job, right after each validation, with its own score.)"""

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, every_n_minutes: float | None = 5.0,
                 filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.every = every_n_train_steps
        self.every_s = every_n_minutes * 60 if every_n_minutes else None
        self.saved_step, self.saved_at = -1, time.monotonic()

    def _save(self, trainer) -> None:
        if trainer.global_step != self.saved_step and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, through the atomic CheckpointIO
            self.saved_step, self.saved_at = trainer.global_step, time.monotonic()

    def _time_is_up(self, trainer) -> bool:
        if self.every_s is None:
            return False
        due = time.monotonic() - self.saved_at >= self.every_s
        if trainer.world_size > 1:  # every rank must take part in a save: rank 0's clock decides, every 10 steps
            return trainer.global_step % 10 == 0 and bool(trainer.strategy.broadcast(due, src=0))
        return due

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the batch that reaches max_steps is saved here, not at the epoch end that follows: Lightning resumes
        # a checkpoint saved in on_train_epoch_end at the *next* epoch, which would skip the rest of this one
        last_step = 0 < trainer.max_steps <= trainer.global_step
        if (self.every and trainer.global_step % self.every == 0) or last_step or self._time_is_up(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Ctrl-C is a KeyboardInterrupt; SIGTERM reaches here as Lightning's SIGTERMException (a SystemExit)
        if isinstance(exception, (KeyboardInterrupt, SystemExit)) and trainer.world_size == 1 and trainer.global_step > 0:
            log.warning("interrupted at step %d: saving %s", trainer.global_step, self.path)
            self._save(trainer)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with its state (the best file, its score, the top k) kept as file names in
    the checkpoint rather than absolute paths: a run folder moved or copied elsewhere resumes tracking the
    best file in its own folder, never one in the original tree."""

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["dirpath"] = "."
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = Path(state[key]).name if state.get(key) else state.get(key)
        state["best_k_models"] = {Path(k).name: v for k, v in state.get("best_k_models", {}).items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("dirpath") != ".":  # written before paths were relative: its paths may point anywhere
            state = {**state, "dirpath": None}
            return super().load_state_dict(state)
        here = lambda name: str(Path(self.dirpath) / name) if name else name  # noqa: E731
        state = {**state, "dirpath": self.dirpath,
                 **{k: here(state.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")},
                 "best_k_models": {here(k): v for k, v in state.get("best_k_models", {}).items()}}
        super().load_state_dict(state)


class ValidateAtEnd(L.Callback):
    """Validates after the last training step when the schedule's last validation came earlier (max_steps 2,500
    with a validation every 1,000 steps), so the run's "final val perplexity" is of its final weights, and the
    best checkpoint and the test see them. It asks Lightning to stop at the last batch, which makes Lightning's
    training loop validate there (its rule for a requested stop); a batch that validates anyway validates once.

    It also keeps a validation that an interrupt cut short: a checkpoint saved during a validation (Ctrl-C,
    SIGTERM) records its step, and the resumed run validates that step before it trains on, so the curve,
    ``val/ppl_best`` and the best-checkpoint ranking have it."""

    def __init__(self):
        self.trainer = None
        self.pending_step: int | None = None  # a validation that a checkpoint cut short, to run on resume

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        t = self.trainer
        cut_short = t is not None and t.validating and not t.sanity_checking and t.state.fn == "fit"
        return {"pending_validation_step": t.global_step if cut_short else None}

    def load_state_dict(self, state: dict) -> None:
        step = state.get("pending_validation_step")
        self.pending_step = step if isinstance(step, int) and not isinstance(step, bool) else None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.pending_step is None or self.pending_step != trainer.global_step or not trainer.enable_validation:
            self.pending_step = None
            return
        log.info("the validation of step %d was interrupted: running it again before training goes on",
                 self.pending_step)
        self.pending_step = None
        lightning_internals.validate_now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.sanity_checking or not trainer.enable_validation:
            return
        loop = trainer.fit_loop
        last_step = 0 < trainer.max_steps <= trainer.global_step
        last_epoch = (loop.max_epochs is not None and loop.max_epochs >= 0 and trainer.current_epoch + 1 >= loop.max_epochs
                      and loop.epoch_loop.batch_progress.is_last_batch)
        if last_step or last_epoch:
            trainer.should_stop = True


class InitLossCheck(L.Callback):
    """The course's tip: is the loss at initialisation what it should be? Before the first step of a new run
    (not a resumed one), log it next to ln(vocab_size) and warn when they differ."""

    def __init__(self, batches: int = 1, tolerance: float = 0.15):
        self.batches, self.tolerance = batches, tolerance

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is not None or trainer.datamodule is None or getattr(pl_module, "initialised_from", None):
            return  # a resumed run, or one started from pretrained weights, is not at initialisation
        x, y = next(iter(trainer.datamodule.train_dataloader()))
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            loss, _ = pl_module.loss((x[:8].to(pl_module.device), y[:8].to(pl_module.device)))
        pl_module.train(was_training)
        expected = math.log(pl_module.cfg.vocab_size)
        log_now(trainer, {"init/loss": loss.item(), "init/expected_loss": expected})
        msg = (f"loss at initialisation {loss.item():.3f}, expected ln(vocab_size={pl_module.cfg.vocab_size}) = "
               f"{expected:.3f}")
        if abs(loss.item() - expected) > max(0.5, self.tolerance * expected):
            log.warning(msg + ": far off; check the initialisation, the labels and the vocabulary")
        else:
            log.info(msg)


class GradNormMonitor(L.Callback):
    """Total gradient norm and one per layer group, before clipping, every ``log_every_n_steps``."""

    def __init__(self, log_every_n_steps: int = 10):
        self.every = log_every_n_steps

    @staticmethod
    def group_of(name: str) -> str:
        name = name.replace("_orig_mod.", "").replace("model.", "", 1)
        if name.startswith("blocks."):
            return "block" + name.split(".")[1]
        return name.split(".")[0]  # tok_emb, pos_emb, ln_f, head

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step % self.every:
            return
        sq: dict[str, torch.Tensor] = {}
        for name, p in pl_module.named_parameters():
            if p.grad is not None:
                g = self.group_of(name)
                sq[g] = sq.get(g, 0) + p.grad.detach().float().pow(2).sum()
        if not sq:
            return
        total = torch.sqrt(sum(sq.values()))
        metrics = {"grad_norm/total": total, **{f"grad_norm/{g}": torch.sqrt(v) for g, v in sq.items()}}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)


class MemoryMonitor(L.Callback):
    """Logs measured memory (CUDA peak allocated/reserved, or process RSS on CPU) and, at the start, the
    estimate from the config; at the end of each epoch prints both side by side."""

    def __init__(self, log_every_n_steps: int = 10):
        self.every = log_every_n_steps
        self.estimate: memory.MemoryEstimate | None = None
        self.rss_start = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        cfg, att = pl_module.cfg, pl_module.model.attention
        dm = trainer.datamodule
        batch = getattr(dm, "batch_size", 1)
        self.estimate = memory.estimate(
            pl_module.model.num_params(non_embedding=False), batch, cfg.context, cfg.d_model, cfg.n_layer,
            cfg.n_head, cfg.vocab_size, get_backend(att.resolved_backend(pl_module.device, cfg.score_mod_name is not None)).materialises_scores,
            str(trainer.precision), att.block_size, cfg.d_ff, cfg.kv_heads)
        log.info("memory estimate for batch %d x context %d, %s attention, precision %s:\n%s", batch, cfg.context,
                 att.name, trainer.precision, self.estimate.table())
        if trainer.ckpt_path is None:  # a resumed run logged its estimate at step 0 already
            log_now(trainer, {f"memory_estimate/{n.split(' ')[0]}": float(b) for n, b in self.estimate.rows()
                              if not n.startswith("(")} | {"memory_estimate/score_matrix": float(self.estimate.score_matrix),
                                                           "memory_estimate/kv_cache": float(self.estimate.kv_cache)})
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:  # this job's own peak from here, not the high-water mark of the jobs this process ran before it
            memory.reset_peak_rss()
        self.rss_start = rss_bytes()
        if pl_module.device.type != "cuda":  # torch, Lightning and the data before training: report.py subtracts it
            log_now(trainer, {"memory/rss_before_training": float(self.rss_start)})

    def measured(self, pl_module) -> dict[str, float]:
        if pl_module.device.type == "cuda":
            return {"memory/peak_allocated": float(torch.cuda.max_memory_allocated(pl_module.device)),
                    "memory/peak_reserved": float(torch.cuda.max_memory_reserved(pl_module.device))}
        return {"memory/rss": float(rss_bytes()), "memory/peak_rss": float(peak_rss_bytes())}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            pl_module.log_dict(self.measured(pl_module), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.estimate is None:
            return
        m = self.measured(pl_module)
        key = "memory/peak_allocated" if "memory/peak_allocated" in m else "memory/peak_rss"
        if key == "memory/peak_rss":  # on CPU the process held torch itself and the data before training
            log.info("memory: estimated %s for training; measured peak RSS %s, of which %s were in use before "
                     "training started", memory.fmt_bytes(self.estimate.total), memory.fmt_bytes(m[key]),
                     memory.fmt_bytes(self.rss_start))
        else:
            log.info("memory: estimated %s, measured peak allocated %s (reserved %s)", memory.fmt_bytes(self.estimate.total),
                     memory.fmt_bytes(m[key]), memory.fmt_bytes(m["memory/peak_reserved"]))


def run_tokens_per_s(windows: list[float]) -> float | None:
    """A run's training tokens/s, the one definition the summary, status.json and report.py use: the median of its
    ``throughput/tokens_per_s`` windows, the first (warm-up) left out when there are others."""
    kept = sorted(windows[1:] if len(windows) > 1 else windows)
    return kept[len(kept) // 2] if kept else None


class ThroughputMonitor(L.Callback):
    """Training tokens per second over the last ``log_every_n_steps`` steps (validation time left out), the
    machine's load average beside it (``system/load``: tokens/s of jobs that shared the cores are not comparable),
    and model FLOPs utilisation on a GPU. ``run_tokens_per_s`` of the windows is the run's figure."""

    def __init__(self, log_every_n_steps: int = 10):
        self.windows: list[float] = []  # this command's tokens/s windows
        self.every = log_every_n_steps
        self.t0: float | None = None
        self.tokens = 0
        self.started: float | None = None  # when this process began training
        self.earlier_seconds = 0.0  # training time before a resume (from the checkpoint)
        self.paused_at: float | None = None  # when the running validation began

    def train_seconds(self) -> float:
        """Wall-clock training time of the whole run, across resumes (time/train_s: curves against time)."""
        return self.earlier_seconds + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.earlier_seconds = float(state.get("train_seconds", 0.0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        if self.started is None:
            self.started = self.t0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.paused_at = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.t0 is not None and self.paused_at is not None:
            self.t0 += time.perf_counter() - self.paused_at  # the window's clock skips the validation
        self.paused_at = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch[0].numel()
        step = trainer.global_step
        if step % self.every or self.t0 is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        dt = time.perf_counter() - self.t0
        tps = self.tokens * trainer.world_size / dt
        self.windows.append(tps)
        metrics = {"throughput/tokens_per_s": tps, "time/train_s": self.train_seconds()}
        if hasattr(os, "getloadavg"):
            metrics["system/load"] = os.getloadavg()[0]
        if pl_module.device.type == "cuda":
            peak = peak_flops(torch.cuda.get_device_name(pl_module.device))
            if peak:
                fpt = pl_module.model.flops_per_token(batch[0].shape[1])
                metrics["throughput/mfu"] = tps * fpt / (peak * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self.t0, self.tokens = time.perf_counter(), 0


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class RunProgressBar(RichProgressBar):
    """Rich's bar, with what a long run needs beside it: the time left for the whole run (not only the epoch;
    measured wall time per step so far, validation included), tokens/s, the latest validation perplexity and,
    in a multirun, which job of how many this is. Also logs one line with the run's estimated length once
    ``estimate_after`` steps are done."""

    def __init__(self, estimate_after: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.estimate_after = estimate_after
        self.start: tuple[float, int] | None = None  # (time, step) when this session's training began
        self.job: tuple[int, int | None] | None = None
        self.estimated = False
        self.epoch_starting = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_starting = True  # Lightning resets its batch count only after this hook
        try:
            super().on_train_epoch_start(trainer, pl_module)
        finally:
            self.epoch_starting = False

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        from attnlab.sweep import job_position
        self.start, self.job = (time.perf_counter(), trainer.global_step), job_position()

    def remaining_seconds(self, trainer) -> float | None:
        if self.start is None or trainer.global_step <= self.start[1]:
            return None
        total = trainer.estimated_stepping_batches  # optimizer steps of the whole run (max_steps or the epochs)
        if not math.isfinite(total):
            return None
        per_step = (time.perf_counter() - self.start[0]) / (trainer.global_step - self.start[1])
        return max(0.0, (total - trainer.global_step) * per_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.estimated and self.start and trainer.global_step - self.start[1] >= self.estimate_after:
            self.estimated = True
            left = self.remaining_seconds(trainer)
            if left is not None:
                log.info("estimated time left: %s for %d more steps (%.2f s per step so far)", duration(left),
                         trainer.estimated_stepping_batches - trainer.global_step,
                         (time.perf_counter() - self.start[0]) / (trainer.global_step - self.start[1]))

    @property
    def total_train_batches(self) -> int | float:
        """The epoch's last batch number, on the same scale as the count shown beside it. Lightning's own total
        for a step-bounded run is the steps *left*, while the count is the batch number *in the epoch*: after a
        mid-epoch resume the bar read e.g. 40/9. Here the total is where this epoch will stop: its end, or the
        batch at which max_steps is reached."""
        trainer = self.trainer
        per_epoch = trainer.num_training_batches
        if not (trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0):
            return per_epoch
        epoch_loop = trainer.fit_loop.epoch_loop
        done = epoch_loop.batch_progress.current.ready  # batches of this epoch fetched so far ...
        if self.epoch_starting and (not epoch_loop.restarting or done >= per_epoch):
            done = 0  # ... except before a new epoch's first batch, when it still holds the previous epoch's count
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(per_epoch, done + left)

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning writes "Epoch 0/-2" for a run bounded by steps (max_epochs=-1): say the step budget instead
        trainer = self.trainer
        if trainer.max_epochs is None or trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch} ({trainer.max_steps:,} steps)"
        return f"{description:{len(self.validation_description)}}"

    def configure_columns(self, trainer) -> list:
        """Rich's columns with elapsed time only: its time-left is the epoch's, which disagreed with the run's
        ETA beside it (the one estimate shown is the whole run's)."""
        from rich.progress import TimeElapsedColumn
        return [TimeElapsedColumn() if type(c).__name__ == "CustomTimeColumn" else c
                for c in super().configure_columns(trainer)]

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        shown = {}
        if self.job:
            shown["job"] = f"{self.job[0]}/{self.job[1] or '?'}"
        left = self.remaining_seconds(trainer) if trainer.training else None
        if left is not None:
            shown["run ETA"] = duration(left)
        tps = trainer.callback_metrics.get("throughput/tokens_per_s")
        if tps is not None:
            shown["tok/s"] = f"{float(tps):,.0f}"
        return {**shown, **items}


class AttentionPicture(L.Callback):
    """At the start of training, draws the attention pattern of the first layers (token-by-token grid) into
    the run folder and logs it to W&B."""

    def __init__(self, dirpath: str, max_tokens: int = 64, layers: int = 2):
        self.dirpath, self.max_tokens, self.layers = Path(dirpath), max_tokens, layers

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from attnlab.attention.pictures import save_pattern_picture
        att, cfg = pl_module.model.attention, pl_module.cfg
        n = min(self.max_tokens, cfg.context)
        paths = []
        for layer in range(min(self.layers, cfg.n_layer)):
            p = save_pattern_picture(att.pattern(n, layer), n, self.dirpath / f"attention_{att.name}_layer{layer}.png",
                                     n_heads=min(cfg.n_head, 4), title=f"{att.name}, layer {layer}")
            paths.append(str(p))
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                try:
                    lg.log_image(key="attention/pattern", images=paths)
                except Exception as e:  # a picture is not worth failing a run
                    log.warning("could not log the attention picture: %s", e)


class SampleTexts(L.Callback):
    """After each validation: short continuations of a few fixed validation-text prompts, appended to
    ``samples.jsonl`` in the run folder and logged to W&B as a table (step, prompt, continuation), so the
    dashboard shows how the text improves. Seeded: the same prompts and random draws at every validation."""

    def __init__(self, dirpath: str, num_prompts: int = 3, prompt_tokens: int = 24, new_tokens: int = 48,
                 temperature: float = 0.8, top_k: int | None = 50, seed: int = 0):
        self.path = Path(dirpath) / run_folder.SAMPLES
        self.num_prompts, self.prompt_tokens, self.new_tokens = num_prompts, prompt_tokens, new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.rows: list[list] = []  # every validation's samples: W&B shows the whole table, newest last

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if trainer.sanity_checking or not trainer.is_global_zero or getattr(dm, "tokens", None) is None:
            return
        if "FSDP" in type(trainer.strategy).__name__:  # rank 0 alone holds a shard, not the model
            return
        model = getattr(pl_module.model, "_orig_mod", pl_module.model)  # the eager module under torch.compile
        val, n = dm.tokens["val"], min(self.prompt_tokens, model.cfg.context - 1)
        if len(val) <= n or not model.attention.causal:
            return
        starts = np.linspace(0, len(val) - n - 1, self.num_prompts).astype(int)  # spread over the split
        device = pl_module.device
        prompts = torch.stack([torch.as_tensor(val[s:s + n].astype(np.int64)) for s in starts]).to(device)  # (P, n)
        out = model.generate(prompts, self.new_tokens, self.temperature, self.top_k,
                             generator=torch.Generator(device).manual_seed(self.seed))  # (P, n + new)
        tok = dm.tokenizer
        rows = [[trainer.global_step, tok.decode(p.tolist()), tok.decode(o[n:].tolist())] for p, o in zip(prompts, out)]
        self.rows += rows
        with self.path.open("a", encoding="utf-8") as f:
            for step, prompt, text in rows:
                f.write(json.dumps({"step": step, "prompt": prompt, "continuation": text}, ensure_ascii=False) + "\n")
        for lg in trainer.loggers:
            if hasattr(lg, "log_table"):
                try:
                    lg.log_table(key="samples", columns=["step", "prompt", "continuation"], data=self.rows)
                except Exception as e:  # a table is not worth failing a run
                    log.warning("could not log the sample table: %s", e)


class AttentionStats(L.Callback):
    """At each validation, each layer's mean attention entropy and mean attention distance on a fixed slice of the
    validation split (the first ``windows`` context windows), so W&B shows how they evolve during training."""

    def __init__(self, windows: int = 4):
        self.windows = windows

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        dm = getattr(trainer, "datamodule", None)
        if trainer.sanity_checking or dm is None or getattr(dm, "tokens", None) is None:
            return
        from attnlab.analysis import head_statistics, inspect
        model = getattr(pl_module.model, "_orig_mod", pl_module.model)  # under torch.compile: the module itself
        T = model.cfg.context
        tokens = dm.tokens["val"]
        n = min(self.windows, (len(tokens) - 1) // T)
        if n < 1:
            return
        idx = torch.as_tensor(np.asarray(tokens[:n * T], dtype=np.int64)).view(n, T).to(pl_module.device)  # (n, T)
        metrics = {}

        def record(layer: int, probs: torch.Tensor) -> None:  # one layer's (n, H, T, T) at a time
            stats = head_statistics(probs.float(), model.attention)
            metrics[f"attention/entropy_layer{layer}"] = sum(stats["entropy"]) / len(stats["entropy"])
            metrics[f"attention/distance_layer{layer}"] = sum(stats["distance"]) / len(stats["distance"])
        was_training = model.training
        model.eval()
        inspect(model, idx, on_layer=record)
        model.train(was_training)
        pl_module.log_dict(metrics, sync_dist=True)


class TaskAccuracy(L.Callback):
    """For the synthetic tasks (``dataset.source: synthetic``; nothing otherwise): at each validation, score
    ``examples`` fresh examples (their own seed, never trained on) and log the accuracy of the answers by the
    distance the attention must reach (``task/acc`` and ``task/acc_d<lo>-<hi>``), the share of examples with
    every answer right (``task/exact``), and beside them the task's chance and trivial levels (``task/chance``,
    ``task/trivial``: MQAR's 1/pairs, what copying any value of the example scores); at the end of training
    write the last scores to ``task_accuracy.json`` in the run folder, which ``report.py`` plots per run.
    ``task/acc`` is the mean over examples of each example's share of right answers (Zoology's accuracy)."""

    def __init__(self, dirpath: str, examples: int = 512, bins: int = 16):
        self.dirpath, self.examples, self.bins = Path(dirpath), examples, bins
        self.last: dict | None = None

    def score(self, pl_module, settings: dict, tokenizer) -> dict:
        from attnlab.data.sources.synthetic import split_seed, task_of
        from attnlab.data.tasks import examples
        task, length = task_of(settings), settings["length"] - 1
        batch = examples(task, self.examples, length, split_seed(settings, "score"))  # a seed no split uses
        ids = tokenizer.encode_batch([e.text for e in batch])
        if any(len(i) != length for i in ids):
            raise ConfigError(f"dataset.task={task.name} needs one token per character (tokenizer=char), got "
                             f"{len(ids[0])} tokens for {length} characters")
        idx = torch.tensor(ids)  # (N, L)
        model = getattr(pl_module.model, "_orig_mod", pl_module.model)
        was_training = model.training
        model.eval()
        with torch.no_grad():  # 64 examples at a time: dense attention's scores stay small
            predicted = torch.cat([model(idx[i:i + 64].to(pl_module.device)).argmax(-1).cpu()
                                   for i in range(0, len(idx), 64)])  # (N, L): the prediction for each next position
        model.train(was_training)
        width = -(-(length - 1) // min(self.bins, length - 1))  # distances 1 .. length - 1 in equal bins
        n_bins = -(-(length - 1) // width)  # (no empty bin at the end)
        rows = torch.tensor([n for n, e in enumerate(batch) for _ in e.answers])
        pos = torch.tensor([p for e in batch for p, _ in e.answers])
        which = torch.tensor([min((d - 1) // width, n_bins - 1) for e in batch for _, d in e.answers])
        truth = torch.tensor([i for e in batch for i in tokenizer.encode(e.expected)])  # the answers' ids
        if len(truth) != len(pos):
            raise ConfigError(f"dataset.task={task.name} needs one token per character (tokenizer=char)")
        right = (predicted[rows, pos - 1] == truth).long()
        counts = torch.bincount(which, minlength=n_bins).tolist()
        hits = torch.bincount(which, weights=right.double(), minlength=n_bins).long().tolist()
        bins = [[b * width + 1, min((b + 1) * width, length - 1)] for b in range(n_bins)]
        per_example = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, right.double())  # (N,)
        answers = torch.bincount(rows, minlength=len(batch)).double()  # (N,)
        return {"task": task.name, "settings": {k: v for k, v in vars(task).items()}, "chance": task.chance,
                "trivial": task.trivial, "examples": self.examples, "distance_bins": bins, "count": counts,
                "accuracy": [h / c if c else None for h, c in zip(hits, counts)],
                "overall": float((per_example / answers).mean()), "exact": float((per_example == answers).double().mean())}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        dm = getattr(trainer, "datamodule", None)
        settings = getattr(dm, "dataset_cfg", None) or {}
        if trainer.sanity_checking or settings.get("source") != "synthetic" or getattr(dm, "tokenizer", None) is None:
            return
        self.last = self.score(pl_module, settings, dm.tokenizer)
        metrics = {"task/acc": self.last["overall"], "task/exact": self.last["exact"],
                   "task/chance": self.last["chance"], "task/trivial": self.last["trivial"]}
        for (lo, hi), acc in zip(self.last["distance_bins"], self.last["accuracy"]):
            if acc is not None:
                metrics[f"task/acc_d{lo}-{hi}"] = acc
        pl_module.log_dict(metrics, sync_dist=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.last is not None and trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            path = self.dirpath / run_folder.TASK_ACCURACY
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self.last, "step": trainer.global_step,
                                       "attention": pl_module.model.attention.name}, indent=1))
            os.replace(tmp, path)


class NonFiniteLossGuard(L.Callback):
    """Stops a run the step its loss becomes NaN or inf, naming the step, the last finite loss and the learning
    rate, instead of training on garbage (one scalar read back per step)."""

    def __init__(self):
        self.last_finite: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        step = trainer.global_step
        if math.isfinite(value):
            self.last_finite = (step, value)
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        last = (f"the last finite loss was {self.last_finite[1]:.4f} at step {self.last_finite[0]}"
                if self.last_finite else "no finite loss before it")
        raise TrainingDiverged(f"training loss became {value} at step {step}; {last}; learning rate {lr:.3g} "
                               f"(lower optimizer.lr, keep trainer.gradient_clip_val, or check the data)")
