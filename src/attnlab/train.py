"""train(cfg): compose datamodule, model, callbacks, loggers and trainer from the Hydra config and fit."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from attnlab.attention import build_attention
from attnlab.lit import LitGPT

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A bad configuration value; the message names it and what is allowed."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed into place: a crash or power loss mid-write
    leaves the previous checkpoint intact, never a half-written one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def find_last_checkpoint(runs_dir: str | Path) -> Path:
    """The newest ``checkpoints/last.ckpt`` under this run name's folders."""
    found = sorted(Path(runs_dir).glob("**/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"ckpt_path=last: no checkpoints/last.ckpt under {runs_dir}; "
                          f"give a path (ckpt_path=/path/to/file.ckpt) or start a new run")
    return found[-1]


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    path = find_last_checkpoint(cfg.paths.runs_dir) if ckpt == "last" else Path(str(ckpt))
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (no state_dict)")
    return str(path)


def wandb_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def sweep_info() -> tuple[bool, str]:
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return False, ""
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return multirun, Path(hc.sweep.dir).name if multirun else ""


def build_loggers(cfg: DictConfig, wandb_run_id: str | None) -> list:
    loggers = []
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        lg_cfg = OmegaConf.to_container(lg_cfg, resolve=True)
        if lg_cfg["_target_"].endswith("WandbLogger"):
            offline = lg_cfg.pop("offline", "auto")
            if offline == "auto":
                offline = not (wandb_has_key() and wandb_reachable())
            multirun, sweep = sweep_info()
            overrides = _overrides_name()
            lg_cfg["offline"] = bool(offline)
            lg_cfg["name"] = lg_cfg.get("name") or (cfg.run_name + (f"[{overrides}]" if overrides else ""))
            lg_cfg["group"] = lg_cfg.get("group") or (f"sweep-{sweep}" if multirun else cfg.attention.name)
            lg_cfg["job_type"] = cfg.attention.name
            lg_cfg["tags"] = sorted(set(lg_cfg.get("tags") or []) | {cfg.attention.name, cfg.model.name,
                                                                      cfg.dataset.name, cfg.get("mode_name", "run")})
            if wandb_run_id:
                lg_cfg["id"], lg_cfg["resume"] = wandb_run_id, "allow"
            Path(lg_cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
            lg = hydra.utils.instantiate(lg_cfg)
            run = lg.experiment  # starts the run now, so its folder can be printed
            resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                        for k in cfg if k != "hydra"}
            lg.experiment.config.update(resolved, allow_val_change=True)
            if offline:
                log.info("W&B is offline (no API key or no network). Upload later with:  wandb sync %s",
                         getattr(run, "dir", lg_cfg["save_dir"]).rsplit("/files", 1)[0])
            loggers.append(lg)
        else:
            loggers.append(hydra.utils.instantiate(lg_cfg))
    return loggers


def _overrides_name() -> str:
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return ""
    return HydraConfig.get().job.override_dirname


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before data or model are built, with messages that name the value."""
    valid_prec = {"32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64", "64-true"}
    if str(cfg.trainer.precision) not in valid_prec:
        raise ConfigError(f"trainer.precision={cfg.trainer.precision!r}; valid: {sorted(valid_prec)}")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be >= 1")
    from attnlab.model import GPTConfig
    model_cfg = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    GPTConfig(**{**model_cfg, "vocab_size": 1})  # dimension checks before any data is read
    att = build_attention(OmegaConf.to_container(cfg.attention, resolve=True))
    accel = str(cfg.trainer.accelerator)
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accel} needs a CUDA GPU and none is visible here; "
                          f"use trainer=default (picks the device) or trainer=cpu")
    device = "cuda" if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()) else "cpu"
    att.check(cfg.model.context, cfg.model.n_head, device)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) one model; returns the final metrics."""
    try:
        check_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not cfg.attention.get("causal", True):
        log.warning("attention.causal=false: every position sees the token it is trained to predict, so the "
                    "next-token loss will collapse towards 0 without learning; bidirectional patterns are for "
                    "encoder use")
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_checkpoint(cfg)
    wandb_run_id = None
    if ckpt_path:
        wandb_run_id = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("attnlab", {}).get("wandb_run_id")
        log.info("resuming from %s", ckpt_path)

    datamodule = hydra.utils.instantiate(cfg.data, dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
                                         tokenizer=OmegaConf.to_container(cfg.tokenizer, resolve=True))
    datamodule.prepare_data()
    log.info("data: %s", {k: v for k, v in datamodule.info.items() if k != "plays"})
    model = LitGPT(model=OmegaConf.to_container(cfg.model, resolve=True),
                   attention=OmegaConf.to_container(cfg.attention, resolve=True),
                   optimizer=hydra.utils.instantiate(cfg.optimizer),
                   scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
                   compile=cfg.compile, vocab_size=datamodule.vocab_size)
    log.info("model: %.2fM parameters, %s attention (%s)", model.model.num_params() / 1e6,
             model.model.attention.name, model.model.attention.describe())

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                 if c is not None and "_target_" in c]
    loggers = build_loggers(cfg, wandb_run_id)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            model.wandb_run_id = lg.experiment.id
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 plugins=[AtomicCheckpointIO()])
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test_after_fit"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    log.info("outputs in %s", cfg.paths.output_dir)
    return metrics
