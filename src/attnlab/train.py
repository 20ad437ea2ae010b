"""train(cfg): compose datamodule, model, callbacks, loggers and trainer from the Hydra config and fit.

Everything is built once and passed on: the model config and the attention type are built and checked
before any data is read, the checkpoint to resume is read once (and handed to Lightning from memory).
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

from attnlab import checkpoints, csv_log, ddp, pretrained, schema, sweep, wandb_run
from attnlab.attention import AttentionType, build_attention
from attnlab.lit import LitGPT
from attnlab.model import GPTConfig
from attnlab.callbacks import TrainingDiverged
from attnlab.commands import CONFIG_PATH

log = logging.getLogger(__name__)


ConfigError = schema.ConfigError


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


def run_device(cfg: DictConfig) -> str:
    accel = str(cfg.trainer.accelerator)
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accel} needs a CUDA GPU and none is visible here; "
                          f"use trainer=default (picks the device) or trainer=cpu")
    return "cuda" if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()) else "cpu"


def build_model_parts(cfg: DictConfig) -> tuple[dict, AttentionType]:
    """The model settings and the attention type, built once and checked before any data is read."""
    schema.check(cfg)
    model_cfg = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    schema.check_fields(GPTConfig, model_cfg, "model")
    if pretrained.is_source(cfg.get("init_from")):  # the checkpoint decides the model's shape
        folder = pretrained.fetch(str(cfg.init_from), cfg.paths.cache_dir)
        model_cfg = pretrained.merge_settings(model_cfg, pretrained.model_settings(folder),
                                              given_settings(cfg, "model"), str(cfg.init_from))
        from omegaconf import open_dict
        with open_dict(cfg):  # the run records (and its checkpoints hold) the settings it really has
            for k, v in model_cfg.items():
                cfg.model[k] = v
            # and its names say what ran (report.py's rows): the pretrained model's shape and tokenizer
            name = sweep.pretrained_name(cfg.init_from, str(cfg.model.get("name")))
            cfg.model["name"] = name
            cfg.tokenizer["name"] = f"pretrained-{name}"
    GPTConfig(**{**model_cfg, "vocab_size": 1})  # dimension checks; the vocabulary comes from the data
    attention = build_attention(OmegaConf.to_container(cfg.attention, resolve=True))
    attention.check(cfg.model.context, cfg.model.n_head, run_device(cfg))
    return model_cfg, attention


def given_settings(cfg: DictConfig, group: str) -> dict:
    """The ``group.key`` settings chosen for this run beyond the group's own file: on the command line or by an
    experiment preset (e.g. experiment=finetune_cpu's model.context). Their composed values."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    keys = {o.split("=", 1)[0].lstrip("+~").removeprefix(f"{group}.") for o in hc.overrides.task
            if o.lstrip("+~").startswith(f"{group}.")}
    choice = hc.runtime.choices.get(group)
    own = Path(__file__).resolve().parent / "conf" / group / f"{choice}.yaml"  # the package's own file
    if choice and own.is_file():
        defaults = OmegaConf.load(own)  # read as Hydra reads it (1e-5 is a number there, a string to PyYAML)
        keys |= {k for k in cfg[group] if k in defaults and cfg[group][k] != defaults[k]}
    return {k: cfg[group][k] for k in keys if k in cfg[group]}


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


def load_initial_weights(model: LitGPT, path: str, settings: dict) -> None:
    """init_from=<ckpt>: start from a checkpoint's weights (e.g. another attention type's), with a fresh
    optimizer, schedule and step count. The checkpoint's own settings say first whether its weights can fit."""
    try:
        loaded = checkpoints.safe_load(path)
        saved = (loaded.get("attnlab") or {}).get("settings") or {}
        shape_keys = ("n_layer", "n_head", "d_model", "d_ff", "context", "bias", "tie_weights", "positions")
        diff = [f"model.{k}={saved['model'][k]!r} there, {settings['model'].get(k)!r} here" for k in shape_keys
                if "model" in saved and k in saved["model"] and saved["model"][k] != settings["model"].get(k)]
        if diff:
            raise ConfigError(f"init_from={path}: its weights do not fit this model ({'; '.join(diff)})")
        state = dict(loaded["state_dict"])
        lit_prefix = "model."  # LitGPT holds the GPT as .model
        inner = {k[len(lit_prefix):]: v for k, v in state.items() if k.startswith(lit_prefix)}
        if model.model.fill_global_projections(inner):
            log.info("init_from=%s: the global projections start as copies of the shared ones", path)
            state.update({lit_prefix + k: v for k, v in inner.items()})
        model.load_state_dict(state, strict=True)
    except checkpoints.CheckpointError as e:
        raise ConfigError(str(e)) from e
    except RuntimeError as e:
        raise ConfigError(f"init_from={path}: its weights do not fit this model "
                          f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from e
    log.info("initial weights from %s", path)


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
        refused = isinstance(error, ConfigError) and trainer is None
        status = "interrupted" if interrupted else "refused" if refused else "failed" if error else "finished"
        reason = (f"stopped by an interrupt (Ctrl-C or SIGTERM) at step {step}; ckpt_path=last resumes it"
                  if interrupted else sweep.one_line(error) if error else "")
        if rank_zero_only.rank == 0:  # under DDP every rank runs train(); one of them records the outcome
            final = {k: round(v, 6) for k, v in (progress.get("metrics") or {}).items() if k in SUMMARY_METRICS}
            earlier = progress.get("earlier_seconds", 0.0)
            sweep.write_status(cfg.paths.output_dir, status, step, started, reason, final, earlier_seconds=earlier)
            if "started_in" in progress:  # the folder this command made says where the run went on (a sweep's
                import os  # summary reads it); a relative path, so the tree can move
                sweep.write_status(progress["started_in"], status, step, started, reason, final,
                                   continued_in=os.path.relpath(cfg.paths.output_dir, progress["started_in"]))
            if status == "finished":
                log.info("%s", summary_table(cfg, final, step, earlier + time.time() - started,
                                             time.time() - started if earlier else None))
            if error is not None and "model_parts" not in progress:
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


def summary_table(cfg: DictConfig, metrics: dict, step: int, seconds: float, this_command: float | None = None) -> str:
    """The end of a run, in a few lines: what a person looks for first. ``seconds``: the whole run's wall time
    (every command of a resumed run); ``this_command``: this command's share, when it resumed."""
    fmt = lambda k: f"{metrics[k]:,.3f}" if k in metrics else "–"  # noqa: E731
    limited = cfg.trainer.get("limit_test_batches") not in (None, 1.0)  # part of the split: evaluate.py gives it all
    rows = [("steps", f"{step:,}")] + ([("val perplexity at the start", fmt("start/val_ppl"))]
                                       if "start/val_ppl" in metrics else []) + [
            ("best val perplexity", fmt("val/ppl_best")),
            ("final val perplexity", fmt("val/ppl")), ("val bits per byte", fmt("val/bpb")),
            ("test perplexity", fmt("test/ppl") + (f" (over {metrics['test/targets']:,.0f} targets"
                                                    f"{', trainer.limit_test_batches' if limited else ''})"
                                                    if "test/targets" in metrics else "")),
            ("test bits per byte", fmt("test/bpb")),
            ("training tokens/s", f"{metrics['throughput/tokens_per_s']:,.0f}" if "throughput/tokens_per_s" in metrics
             else "–"), ("wall time", f"{seconds:,.1f} s" + (f" (this command {this_command:,.1f} s)"
                                                             if this_command is not None else "")),
            ("checkpoints", str(Path(cfg.paths.output_dir) / checkpoints.CHECKPOINT_DIR))]
    width = max(len(k) for k, _ in rows)
    return "run finished:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def set_threads(cfg: DictConfig) -> None:
    """torch's threads for this run: ``threads`` when given, else the cores free at its start (``attnlab.threads``),
    said in one line; a warning only when a given number exceeds the free cores."""
    from attnlab import threads
    if sweep.parallel_jobs() > 1:  # cpu_share pinned this job and set its threads
        return
    n = threads.apply(cfg.get("threads"))
    if cfg.get("threads") and run_device(cfg) == "cpu":
        free, why = threads.choose(None)
        if n > free:
            log.warning("threads=%d, but only %s: each step waits for the slowest thread; threads=%d would match",
                        n, why.split(" (")[0], free)


def continue_in(cfg: DictConfig, folder: Path) -> None:
    """A resumed run writes into its own run folder (checkpoints, logs, status), not the new one Hydra made."""
    from omegaconf import open_dict
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)


def _train(cfg: DictConfig, progress: dict) -> dict[str, Any]:
    model_cfg, attention = build_model_parts(cfg)
    progress["model_parts"] = True
    if pretrained.is_source(cfg.get("init_from")) and rank_zero_only.rank == 0:
        # the checkpoint set the model's shape: the run folder's config says what the run really is
        saved = Path(cfg.paths.output_dir) / ".hydra" / "config.yaml"
        if saved.is_file():
            OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), saved)
    set_threads(cfg)
    if not attention.causal:
        log.warning("attention.causal=false: every position sees the token it is trained to predict, so the "
                    "next-token loss will collapse towards 0 without learning; bidirectional patterns are for "
                    "encoder use")
    try:
        resume = checkpoints.resolve(cfg)
    except checkpoints.CheckpointError as e:
        raise ConfigError(str(e)) from e
    key = checkpoints.run_key(cfg)
    L.seed_everything(cfg.seed, workers=True)
    source = str(cfg.get("init_from") or "")
    hf_folder = pretrained.fetch(source, cfg.paths.cache_dir) if pretrained.is_source(source) else None
    datamodule = build_datamodule(cfg, **({"tokenizer_from": str(pretrained.tokenizer_folder(hf_folder, cfg.paths.cache_dir))}
                                          if hf_folder else {}))  # a pretrained model reads with its own tokenizer
    datamodule.prepare_data()
    log.info("data: %s", {k: v for k, v in datamodule.info.items() if k != "plays"})
    tokenizer = datamodule.tokenizer
    resume_id = None
    if resume:  # every check before anything is written into the run folder being resumed
        saved = resume.state.get("attnlab", {}).get("tokenizer")
        if saved and saved != tokenizer.fingerprint:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: checkpoint {resume.path} was trained with another "
                              f"tokenizer (fingerprint {saved}, this data gives {tokenizer.fingerprint}): the "
                              f"training text or tokenizer settings changed; resume with the same data, or start "
                              f"from its weights with init_from=")
        saved_corpus = resume.state.get("attnlab", {}).get("corpus")
        if saved_corpus and datamodule.corpus_id and saved_corpus != datamodule.corpus_id:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: checkpoint {resume.path} was trained on other training "
                              f"tokens (corpus {saved_corpus}, this data gives {datamodule.corpus_id}): the training "
                              f"text changed since; resume with the same text, or start from its weights with "
                              f"init_from=")
        if resume.folder is not None and Path(resume.folder).resolve() != Path(cfg.paths.output_dir).resolve():
            log.info("resuming run %s from %s (step %s); its records continue in that folder (this one keeps only "
                     "this command's log)", resume.folder, Path(resume.path).name, resume.state.get("global_step"))
            progress["started_in"] = str(cfg.paths.output_dir)
            continue_in(cfg, resume.folder)
        else:
            log.info("resuming from %s (step %s)", resume.path, resume.state.get("global_step"))
        progress["earlier_seconds"] = sweep.earlier_wall_seconds(cfg.paths.output_dir)  # the run's folder by now
        resume_id = resume.state.get("attnlab", {}).get("wandb_run_id")
        if rank_zero_only.rank == 0:
            progress["logged_up_to"] = csv_log.trim(cfg.paths.output_dir, int(resume.state.get("global_step", 0)))
    if rank_zero_only.rank == 0:  # the run folder holds its own tokenizer: sample/evaluate need no corpus
        tokenizer.save(cfg.paths.output_dir)
    model = LitGPT(GPTConfig(**{**model_cfg, "vocab_size": datamodule.vocab_size}), attention,
                   optimizer=hydra.utils.instantiate(cfg.optimizer),
                   scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True), compile=cfg.compile,
                   run_info={"run_key": key, "settings": checkpoints.settings_of(cfg),
                             "tokenizer": tokenizer.fingerprint, "corpus": datamodule.corpus_id})
    if hf_folder is not None:
        pretrained.load_into(model.model, hf_folder, source)
        model.initialised_from = source
    elif cfg.get("init_from"):
        load_initial_weights(model, str(cfg.init_from), checkpoints.settings_of(cfg))
        model.initialised_from = str(cfg.init_from)  # trained weights: the loss is not at initialisation
    device = run_device(cfg)
    log.info("model: %.2fM parameters, %s attention, backend %s on %s (%s)", model.model.num_params() / 1e6,
             attention.name, attention.resolved_backend(device), device, attention.describe())
    if rank_zero_only.rank == 0:  # what ran, for report.py and for whoever reads the folder later
        checkpoints.write_run_file(cfg.paths.output_dir, key, tokenizer=tokenizer.fingerprint,
                                   backend=attention.resolved_backend(device), device=device,
                                   params=model.model.num_params(), attention=checkpoints.settings_of(cfg)["attention"],
                                   versions=versions())

    position = sweep.job_position()
    later_job = position is not None and position[0] > 1  # the model summary is printed for a sweep's first job
    callbacks = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if c is None or "_target_" not in c or (later_job and name == "model_summary"):
            continue
        callbacks.append(hydra.utils.instantiate(c))
    loggers = build_loggers(cfg, resume_id, progress.get("logged_up_to", -1))  # (steps after it run again)
    model.wandb_run_id = wandb_run.run_id(loggers)
    model.answers_only = datamodule.loss_on == "answers"
    trainer: L.Trainer = build_trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **({"enable_model_summary": False} if later_job else {}),
        plugins=[checkpoints.CheckpointIO(preloaded=(resume.path, resume.state) if resume else None)])
    progress["trainer"] = trainer
    start = {}
    if cfg.get("validate_first") and resume is None:  # the weights as they start: e.g. GPT-2 right after the swap
        # under no_grad rather than inference mode: tensors the backends cache on this pass (layouts, plans) are
        # used by training afterwards, and inference tensors cannot take part in autograd
        loop = trainer.validate_loop
        inference_mode, loop.inference_mode = loop.inference_mode, False
        try:
            scores = (trainer.validate(model, datamodule=datamodule, verbose=False) or [{}])[0]
        finally:
            loop.inference_mode = inference_mode
        start = {f"start/{k.replace('/', '_')}": float(v) for k, v in scores.items()}
        if "val/ppl" in scores:  # (nothing when validation is off: trainer.limit_val_batches=0)
            log.info("before training: val/ppl %.3f (val/loss %.4f)", scores["val/ppl"], scores["val/loss"])
    with warnings.catch_warnings():
        # Lightning cannot see that TextDataModule restores the data position itself (its state_dict, with
        # ResumableSampler skipping the batches already trained on), so it warns that a mid-epoch resume is unsafe
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume.path if resume else None)
    metrics = {**start, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    from attnlab.callbacks import ThroughputMonitor, run_tokens_per_s
    windows = [w for c in callbacks if isinstance(c, ThroughputMonitor) for w in c.windows]
    if run_tokens_per_s(windows) is not None:  # the run's tokens/s as report.py computes it, not the last window's
        metrics["throughput/tokens_per_s"] = run_tokens_per_s(windows)
    if cfg.get("test_after_fit"):
        best = next((c.best_model_path for c in callbacks
                     if isinstance(c, L.pytorch.callbacks.ModelCheckpoint) and c.monitor and c.best_model_path), None)
        if best:
            log.info("testing the best checkpoint %s", best)
        trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    log.info("outputs in %s", cfg.paths.output_dir)
    return metrics


DATA_KEYS = ("context", "batch_size", "eval_batch_size", "num_workers", "seed", "cache_dir", "overfit_batches", "verify",
             "loss_on")


def build_datamodule(cfg: DictConfig, **overrides):
    """The data module from the ``data`` settings: plain values, no ``_target_`` (the class is always ours)."""
    from attnlab.data.datamodule import TextDataModule
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return TextDataModule(dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
                          tokenizer=OmegaConf.to_container(cfg.tokenizer, resolve=True),
                          **{k: data[k] for k in DATA_KEYS if k in data}, **overrides)


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

