"""Evaluate a trained checkpoint: loss, perplexity and bits per byte on a split, from the run's own saved config.

``run=`` names a run folder (the one with ``.hydra/config.yaml``; its best checkpoint is used, else
``last.ckpt``) or a ``.ckpt`` file inside one. The model, tokenizer and data are rebuilt from that run's config,
so no training override has to be repeated. Works under DDP (``trainer=ddp_cpu``, ``trainer=ddp``): every
target of the split is counted once across the processes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from attnlab import checkpoints, ddp
from attnlab.attention import build_attention
from attnlab.lit import LitGPT
from attnlab.model import GPTConfig
from attnlab.schema import ConfigError, check_fields
from attnlab.train import build_trainer

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def find_run(run: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``run=`` a folder or a .ckpt file."""
    path = Path(str(run)).expanduser()
    if not path.exists():
        raise ConfigError(f"run={run}: no such file or folder (give a run folder under outputs/ or a .ckpt file)")
    if path.is_file():
        folder = next((p for p in path.parents if (p / ".hydra" / "config.yaml").is_file()), None)
        if folder is None:
            raise ConfigError(f"run={run}: no run folder (with .hydra/config.yaml) above this checkpoint, so its "
                              f"model and data settings are unknown")
        return folder, path
    if not (path / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"run={run}: not a run folder (it has no .hydra/config.yaml)")
    info = path / checkpoints.RUN_FILE
    ckpt_dir = Path(json.loads(info.read_text())["checkpoint_dir"]) if info.is_file() else path / "checkpoints"
    ckpts = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    best = [p for p in ckpts if p.name != "last.ckpt"]  # best_checkpoint's file: ranked by its own validation
    if not ckpts:
        raise ConfigError(f"run={run}: the run folder has no checkpoint in {ckpt_dir} (was it a debug run? "
                          f"mode=debug saves none)")
    return path, (best or ckpts)[0]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r}; valid: {list(SPLITS)}")
    folder, ckpt = find_run(cfg.run)
    run_cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    try:
        state = checkpoints.safe_load(ckpt)
    except checkpoints.CheckpointError as e:
        raise ConfigError(str(e)) from e
    model_cfg = {k: v for k, v in OmegaConf.to_container(run_cfg.model, resolve=True).items() if k != "name"}
    check_fields(GPTConfig, model_cfg, "model")
    attention = build_attention(OmegaConf.to_container(run_cfg.attention, resolve=True))

    data_cfg = OmegaConf.to_container(run_cfg.data, resolve=False)
    data_cfg.update(dataset=OmegaConf.to_container(run_cfg.dataset, resolve=True),
                    tokenizer=OmegaConf.to_container(run_cfg.tokenizer, resolve=True),
                    context=run_cfg.model.context, cache_dir=cfg.paths.cache_dir, seed=run_cfg.seed,
                    overfit_batches=0)
    if cfg.batch_size:
        data_cfg["eval_batch_size"] = cfg.batch_size
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    model = LitGPT(GPTConfig(**{**model_cfg, "vocab_size": datamodule.vocab_size}), attention)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"run={cfg.run}: checkpoint {ckpt} does not fit the run's model "
                          f"({str(e).splitlines()[0][:200]})") from e
    del state
    log.info("evaluating %s on the %s split", ckpt, cfg.split)

    limit = cfg.limit_batches
    trainer: L.Trainer = build_trainer(cfg.trainer, **{f"limit_{cfg.split}_batches": limit} if limit is not None else {})
    run = trainer.validate if cfg.split == "val" else trainer.test
    with ddp.job():
        [metrics] = run(model, datamodule=datamodule, verbose=False)
    result = {"run": str(folder), "checkpoint": str(ckpt), "split": cfg.split,
              "loss": float(metrics[f"{cfg.split}/loss"]), "ppl": float(metrics[f"{cfg.split}/ppl"]),
              "bpb": float(metrics[f"{cfg.split}/bpb"]) if f"{cfg.split}/bpb" in metrics else None,
              "processes": trainer.world_size}
    if rank_zero_only.rank == 0:
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(json.dumps(result, indent=1))
        log.info("%s: %s loss %.6f, perplexity %.4f, bits per byte %s (written to %s)", ckpt.name, cfg.split,
                 result["loss"], result["ppl"], f"{result['bpb']:.4f}" if result["bpb"] else "n/a", out)
    return result
