"""train(cfg): build the run's spec once from the Hydra config, then the data, model, callbacks, loggers and
trainer from it, and fit.

``RunSpec.from_hydra`` checks every setting and resolves init_from before any data is read; the checkpoint to
resume is read once (and handed to Lightning from memory); ``_train`` is the list of build steps.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from attnlab import checkpoints, csv_log, ddp, lightning_internals, pretrained, sweep, wandb_run
from attnlab.callbacks import TrainingDiverged
from attnlab.commands import CONFIG_PATH
from attnlab.errors import ConfigError, UserError
from attnlab.lit import LitGPT
from attnlab.run_folder import RunFolder
from attnlab.spec import InitFrom, RunSpec

log = logging.getLogger(__name__)


CPU_DEFAULT = "experiment=shakespeare_cpu"  # what `python train.py` runs where no GPU is visible
SIZE_CHOICES = ("model", "experiment", "mode", "hparams_search", "trainer")  # choosing any of these opts out


def cpu_default_override(argv: list[str], cuda_available: bool) -> str | None:
    """``CPU_DEFAULT`` when the command line chooses no model size (no model, experiment, mode, search or
    trainer setting) and there is no GPU: the full-size default would run for hours on a CPU. None otherwise."""
    if cuda_available:
        return None
    for arg in argv:
        key = arg.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("@", 1)[0]
        if key in SIZE_CHOICES or arg in ("--help", "-h", "--hydra-help", "--info", "-i"):
            return None
    return CPU_DEFAULT


def build_trainer(trainer_cfg: DictConfig, **kwargs) -> L.Trainer:
    """The Lightning Trainer; settings Lightning rejects (e.g. trainer=fsdp without a GPU) become one line."""
    try:
        # the datamodule shards every split itself, exactly (see datamodule.py): Lightning's samplers stay off
        return hydra.utils.instantiate(trainer_cfg, use_distributed_sampler=False, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"trainer: {str(cause).strip().splitlines()[0]}") from e


def build_loggers(cfg: DictConfig, resume_id: str | None, floor: int = -1) -> list:
    loggers = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        lg_cfg = OmegaConf.to_container(lg_cfg, resolve=True)
        if wandb_run.is_wandb(lg_cfg["_target_"]):
            loggers.append(wandb_run.build_logger(cfg, lg_cfg, resume_id, floor))
        else:
            loggers.append(hydra.utils.instantiate(lg_cfg))
    return loggers


def load_initial_weights(model: LitGPT, init: InitFrom, settings: dict) -> None:
    """init_from: start from a checkpoint's weights (e.g. another attention type's) or a Hugging Face GPT-2's,
    with a fresh optimizer, schedule and step count. A checkpoint's own settings say first whether its weights fit."""
    if init.kind == "hugging_face":
        pretrained.load_into(model.model, init.path, init.source)
    elif init.kind == "checkpoint":
        path = init.path
        loaded = checkpoints.safe_load(path)
        saved = (loaded.get("attnlab") or {}).get("settings") or {}
        shape_keys = ("n_layer", "n_head", "d_model", "d_ff", "context", "bias", "tie_weights", "positions")
        diff = [f"model.{k}={saved['model'][k]!r} there, {settings['model'].get(k)!r} here" for k in shape_keys
                if "model" in saved and k in saved["model"] and saved["model"][k] != settings["model"].get(k)]
        if diff:
            raise ConfigError(f"init_from={init.source}: its weights do not fit this model ({'; '.join(diff)})")
        state = dict(loaded["state_dict"])
        lit_prefix = "model."  # LitGPT holds the GPT as .model
        inner = {k[len(lit_prefix):]: v for k, v in state.items() if k.startswith(lit_prefix)}
        filled, pooled = model.model.fill_global_projections(inner), model.model.pool_kv_heads(inner)
        if filled:
            log.info("init_from=%s: the global projections start as copies of the shared ones", init.source)
        if pooled:
            log.info("init_from=%s: %d key/value heads mean-pooled into %d per layer (grouped-query uptraining)",
                     init.source, model.model.cfg.n_head, model.model.cfg.kv_heads)
        if filled or pooled:
            state.update({lit_prefix + k: v for k, v in inner.items()})
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise ConfigError(f"init_from={init.source}: its weights do not fit this model "
                              f"({lines[1].strip() if len(lines) > 1 else e})") from e
        log.info("initial weights from %s", path)
    else:
        return
    model.initialised_from = init.source  # trained weights: the loss is not at initialisation


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) one model; returns the final metrics. How it ended goes to ``status.json`` in the run
    folder (finished, failed or interrupted), and the W&B run is finished (marked failed if it raised)."""
    started, progress, error, interrupted = time.time(), {}, None, False
    try:
        with sweep.cpu_share(), ddp.job():
            metrics = _train(cfg, progress)
            progress["metrics"] = metrics
            return metrics
    except BaseException as e:
        error, trainer = e, progress.get("trainer")
        # Lightning turns Ctrl-C into SystemExit(1), after the callbacks' on_exception (last.ckpt is saved)
        interrupted = isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and trainer is not None
                                                          and trainer.interrupted)
        if interrupted and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted at step {trainer.global_step}") from None
        raise
    finally:
        trainer = progress.get("trainer")
        step = trainer.global_step if trainer is not None else 0
        # refused: bad input found before anything trained (the folder holds no result; report.py skips it)
        refused = isinstance(error, UserError) and trainer is None
        status = "interrupted" if interrupted else "refused" if refused else "failed" if error else "finished"
        reason = (f"stopped by an interrupt (Ctrl-C or SIGTERM) at step {step}; ckpt_path=last resumes it"
                  if interrupted else sweep.one_line(error) if error else "")
        if rank_zero_only.rank == 0:  # under DDP every rank runs train(); one of them records the outcome
            final = {k: round(v, 6) for k, v in (progress.get("metrics") or {}).items() if k in SUMMARY_METRICS}
            earlier = progress.get("earlier_seconds", 0.0)
            folder = progress["spec"].output_dir if "spec" in progress else Path(cfg.paths.output_dir)
            sweep.write_status(folder, status, step, started, reason, final, earlier_seconds=earlier)
            if "started_in" in progress:  # the folder this command made says where the run went on (a sweep's
                import os  # summary reads it); a relative path, so the tree can move
                sweep.write_status(progress["started_in"], status, step, started, reason, final,
                                   continued_in=os.path.relpath(folder, progress["started_in"]))
            if status == "finished":
                log.info("%s", summary_table(final, step, earlier + time.time() - started, RunFolder(folder).checkpoint_dir,
                                             time.time() - started if earlier else None,
                                             cfg.trainer.get("limit_test_batches") not in (None, 1.0)))
            if error is not None and "spec" not in progress:
                wandb_run.record_failed_job(cfg, reason)  # a sweep job with a bad config still gets its W&B run
        wandb_run.finish(failed=error is not None)


def versions() -> dict[str, str | None]:
    """Python, torch, Lightning and attnlab (with its git commit when run from a checkout)."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    try:
        attnlab_version = version("attnlab")
    except PackageNotFoundError:
        attnlab_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, timeout=5,
                                capture_output=True, text=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
            "attnlab": attnlab_version, "attnlab_commit": commit}


SUMMARY_METRICS = ("start/val_ppl", "val/ppl_best", "val/ppl", "val/bpb", "test/ppl", "test/bpb", "test/targets",
                   "val/targets", "throughput/tokens_per_s")


def summary_table(metrics: dict, step: int, seconds: float, checkpoint_dir: Path, this_command: float | None = None,
                  limited_test: bool = False) -> str:
    """The end of a run, in a few lines: what a person looks for first. ``seconds``: the whole run's wall time
    (every command of a resumed run); ``this_command``: this command's share, when it resumed; ``limited_test``:
    trainer.limit_test_batches scored part of the test split (evaluate.py gives it all)."""
    fmt = lambda k: f"{metrics[k]:,.3f}" if k in metrics else "–"  # noqa: E731
    rows = [("steps", f"{step:,}")] + ([("val perplexity at the start", fmt("start/val_ppl"))]
                                       if "start/val_ppl" in metrics else []) + [
            ("best val perplexity", fmt("val/ppl_best")),
            ("final val perplexity", fmt("val/ppl")), ("val bits per byte", fmt("val/bpb")),
            ("test perplexity", fmt("test/ppl") + (f" (over {metrics['test/targets']:,.0f} targets"
                                                    f"{', trainer.limit_test_batches' if limited_test else ''})"
                                                    if "test/targets" in metrics else "")),
            ("test bits per byte", fmt("test/bpb")),
            ("training tokens/s", f"{metrics['throughput/tokens_per_s']:,.0f}" if "throughput/tokens_per_s" in metrics
             else "–"), ("wall time", f"{seconds:,.1f} s" + (f" (this command {this_command:,.1f} s)"
                                                             if this_command is not None else "")),
            ("checkpoints", str(checkpoint_dir))]
    width = max(len(k) for k, _ in rows)
    return "run finished:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def set_threads(threads: int | None, device: str) -> None:
    """torch's threads for this run: ``threads`` when given, else the cores free at its start (``attnlab.threads``),
    said in one line; a warning only when a given number exceeds the free cores."""
    from attnlab import threads as cores
    if sweep.parallel_jobs() > 1:  # cpu_share pinned this job and set its threads
        return
    n = cores.apply(threads)
    if threads and device == "cpu":
        free, why = cores.choose(None)
        if n > free:
            log.warning("threads=%d, but only %s: each step waits for the slowest thread; threads=%d would match",
                        n, why.split(" (")[0], free)


def check_checkpoint_folder(cfg: DictConfig) -> None:
    """Checkpoints are always ``<run folder>/checkpoints`` (RunFolder): resume, run= and report look only there,
    so a checkpoint callback pointed elsewhere is refused in one line."""
    expected = RunFolder(cfg.paths.output_dir).checkpoint_dir.resolve()
    given = [("paths.checkpoint_dir", cfg.paths.get("checkpoint_dir"))] + [
        (f"callbacks.{name}.dirpath", c.get("dirpath")) for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None and str(c.get("_target_", "")).endswith("ModelCheckpoint")]
    for key, value in given:
        if value is not None and Path(str(value)).expanduser().resolve() != expected:
            raise ConfigError(f"{key}={value}: checkpoints are always written to the run folder's checkpoints/ "
                              f"(resume, sample and evaluate look only there); drop the setting")


def check_resume_fits(resume: checkpoints.Resume, datamodule, ckpt_path: str) -> None:
    """A checkpoint resumes only on the data it trained on: its tokenizer and its training tokens."""
    saved = resume.state.get("attnlab", {}).get("tokenizer")
    tokenizer = datamodule.tokenizer
    if saved and saved != tokenizer.fingerprint:
        raise ConfigError(f"ckpt_path={ckpt_path}: checkpoint {resume.path} was trained with another "
                          f"tokenizer (fingerprint {saved}, this data gives {tokenizer.fingerprint}): the "
                          f"training text or tokenizer settings changed; resume with the same data, or start "
                          f"from its weights with init_from=")
    saved_corpus = resume.state.get("attnlab", {}).get("corpus")
    if saved_corpus and datamodule.corpus_id and saved_corpus != datamodule.corpus_id:
        raise ConfigError(f"ckpt_path={ckpt_path}: checkpoint {resume.path} was trained on other training "
                          f"tokens (corpus {saved_corpus}, this data gives {datamodule.corpus_id}): the training "
                          f"text changed since; resume with the same text, or start from its weights with "
                          f"init_from=")


def continue_resumed_run(cfg: DictConfig, spec: RunSpec, resume: checkpoints.Resume, progress: dict) -> RunSpec:
    """A resumed run writes into its own run folder (checkpoints, logs, status), not the new one Hydra made;
    the CSV log is cut back to the checkpoint's step (the steps after it run again)."""
    step = resume.state.get("global_step")
    if resume.folder is not None and Path(resume.folder).resolve() != spec.output_dir.resolve():
        log.info("resuming run %s from %s (step %s); its records continue in that folder (this one keeps only "
                 "this command's log)", resume.folder, Path(resume.path).name, step)
        progress["started_in"] = str(spec.output_dir)
        from omegaconf import open_dict
        with open_dict(cfg):  # the callbacks' and loggers' paths interpolate it
            cfg.paths.output_dir = str(resume.folder)
        spec = spec.moved_to(resume.folder)
    else:
        log.info("resuming from %s (step %s)", resume.path, step)
    progress["earlier_seconds"] = sweep.earlier_wall_seconds(spec.output_dir)
    if rank_zero_only.rank == 0:
        progress["logged_up_to"] = csv_log.trim(spec.output_dir, int(resume.state.get("global_step", 0)))
    return spec


def build_model(spec: RunSpec, datamodule) -> LitGPT:
    """The LitGPT of the spec, its vocabulary from the data, its starting weights from init_from."""
    attention = spec.attention_type()
    model = LitGPT(spec.gpt_config(datamodule.vocab_size, datamodule.document_end), attention, optimizer=hydra.utils.instantiate(spec.optimizer),
                   scheduler=spec.scheduler, compile=spec.compile,
                   run_info={"run_key": spec.run_key, "settings": {"model": spec.checkpoint_model,
                                                                   "attention": spec.attention,
                                                                   "data": {"document_mask": spec.data.document_mask}},
                             "tokenizer": datamodule.tokenizer.fingerprint, "corpus": datamodule.corpus_id})
    load_initial_weights(model, spec.init, {"model": spec.checkpoint_model})
    model.answers_only = datamodule.loss_on == "answers"
    log.info("model: %.2fM parameters, %s attention, backend %s on %s (%s)", model.model.num_params() / 1e6,
             attention.name, spec.backend, spec.device, attention.describe())
    return model


def build_callbacks(cfg: DictConfig) -> list:
    """The callbacks of ``cfg.callbacks`` (a named dict; null entries are off). A sweep prints the model summary
    for its first job only."""
    return [hydra.utils.instantiate(c) for name, c in (cfg.get("callbacks") or {}).items()
            if c is not None and "_target_" in c and not (later_sweep_job() and name == "model_summary")]


def later_sweep_job() -> bool:
    """A sweep's job after its first: its model summary is not printed again."""
    position = sweep.job_position()
    return position is not None and position[0] > 1


def validate_first(trainer: L.Trainer, model: LitGPT, datamodule) -> dict:
    """The starting weights' validation scores (``start/*``): e.g. GPT-2 right after the attention swap."""
    scores = lightning_internals.validate_with_grad_allowed(trainer, model, datamodule)
    if "val/ppl" in scores:  # (nothing when validation is off: trainer.limit_val_batches=0)
        log.info("before training: val/ppl %.3f (val/loss %.4f)", scores["val/ppl"], scores["val/loss"])
    return {f"start/{k.replace('/', '_')}": float(v) for k, v in scores.items()}


def fit(trainer: L.Trainer, model: LitGPT, datamodule, resume: checkpoints.Resume | None) -> None:
    with warnings.catch_warnings():
        # Lightning cannot see that TextDataModule restores the data position itself (its state_dict, with
        # ResumableSampler skipping the batches already trained on), so it warns that a mid-epoch resume is unsafe
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume.path if resume else None)


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def run_throughput(callbacks: list) -> dict[str, float]:
    """The run's tokens/s as report.py computes it (the median of its windows), not the last window's."""
    from attnlab.callbacks import ThroughputMonitor, run_tokens_per_s
    rate = run_tokens_per_s([w for c in callbacks if isinstance(c, ThroughputMonitor) for w in c.windows])
    return {} if rate is None else {"throughput/tokens_per_s": rate}


def test_best(trainer: L.Trainer, model: LitGPT, datamodule, callbacks: list) -> dict[str, float]:
    """The test split scored with the best checkpoint (by validation), else the final weights."""
    best = next((c.best_model_path for c in callbacks
                 if isinstance(c, L.pytorch.callbacks.ModelCheckpoint) and c.monitor and c.best_model_path), None)
    if best:
        log.info("testing the best checkpoint %s", best)
    trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=True)
    return scalar_metrics(trainer)


def record_run(spec: RunSpec, model: LitGPT, tokenizer) -> None:
    """The run folder's record (run.json): its key, its spec, and facts about what ran."""
    if rank_zero_only.rank == 0:
        RunFolder(spec.output_dir).write_record(run_key=spec.run_key, spec=spec.record(), tokenizer=tokenizer.fingerprint,
                                                backend=spec.backend, device=spec.device,
                                                params=model.model.num_params(), versions=versions())


def _train(cfg: DictConfig, progress: dict) -> dict[str, Any]:
    spec = RunSpec.from_hydra(cfg)  # every setting checked, init_from resolved: before any data is read
    progress["spec"] = spec
    set_threads(spec.threads, spec.device)
    if not spec.attention.get("causal", True):
        log.warning("attention.causal=false: every position sees the token it is trained to predict, so the "
                    "next-token loss will collapse towards 0 without learning; bidirectional patterns are for "
                    "encoder use")
    check_checkpoint_folder(cfg)
    resume = checkpoints.resolve(cfg)
    L.seed_everything(spec.seed, workers=True)
    datamodule = spec.data.build()
    datamodule.prepare_data()
    log.info("data: %s", {k: v for k, v in datamodule.info.items() if k != "plays"})
    if resume:  # every check before anything is written into the run folder being resumed
        check_resume_fits(resume, datamodule, spec.ckpt_path)
        spec = progress["spec"] = continue_resumed_run(cfg, spec, resume, progress)
    if rank_zero_only.rank == 0:  # the run folder holds its own tokenizer: sample/evaluate need no corpus
        datamodule.tokenizer.save(spec.output_dir)
    model = build_model(spec, datamodule)
    record_run(spec, model, datamodule.tokenizer)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg, resume and resume.state.get("attnlab", {}).get("wandb_run_id"),
                            progress.get("logged_up_to", -1))
    model.wandb_run_id = wandb_run.run_id(loggers)
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                            **({"enable_model_summary": False} if later_sweep_job() else {}),
                            plugins=[checkpoints.CheckpointIO(preloaded=(resume.path, resume.state) if resume else None)])
    progress["trainer"] = trainer
    start = validate_first(trainer, model, datamodule) if spec.validate_first and resume is None else {}
    fit(trainer, model, datamodule, resume)
    metrics = {**start, **scalar_metrics(trainer), **run_throughput(callbacks)}
    if spec.test_after_fit:
        metrics.update(test_best(trainer, model, datamodule, callbacks))
    log.info("outputs in %s", spec.output_dir)
    return metrics


def _train_or_stop(cfg: DictConfig) -> dict:
    try:
        return train(cfg)
    except TrainingDiverged as e:  # its message says what happened and what to try: one line, exit 1
        if sweep.is_multirun():
            raise
        log.error("%s", e)
        raise SystemExit(1) from None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from attnlab.cli import run_task
    metrics = run_task(_train_or_stop, cfg, records_status=True)  # train() writes the run's status.json itself
    if metrics is None:
        return None
    return metrics.get(cfg.get("optimized_metric") or "val/ppl")  # for a sweeper (hparams_search=...) to minimise


def main() -> None:
    """``attnlab train`` / ``python train.py``: one run, or a sweep with -m. Without a GPU and without a chosen
    model size, ``CPU_DEFAULT`` runs (said in one line and recorded as an override)."""
    import sys
    cpu_default = cpu_default_override(sys.argv[1:], torch.cuda.is_available())
    if cpu_default:  # recorded in the run's .hydra/overrides.yaml like any override
        print(f"attnlab: no GPU here and no model size chosen, so this runs {cpu_default} (about 12 minutes on "
              f"2 CPU cores); `attnlab train model=small` runs the full-size default (hours on a CPU)",
              file=sys.stderr)
        sys.argv.append(cpu_default)
    _hydra_main()

