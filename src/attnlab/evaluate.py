"""Evaluate a trained checkpoint: loss, perplexity and bits per byte on a split, from the run's own saved config.

``run=`` names a run folder, a ``.ckpt`` file inside one, or ``last`` (see ``runs.py``). The model, tokenizer and data are rebuilt from that run's config,
so no training override has to be repeated. Works under DDP (``trainer=ddp_cpu``, ``trainer=ddp``): every
target of the split is counted once across the processes.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from attnlab import ddp, runs, schema
from attnlab.schema import ConfigError
from attnlab.train import build_trainer
from attnlab.cli import run_task
from attnlab.commands import CONFIG_PATH

log = logging.getLogger(__name__)
def evaluate(cfg: DictConfig) -> dict[str, float]:
    schema.check_command("evaluate", cfg)
    schema.check(cfg)  # the trainer's and dataset's ruled settings
    other = cfg.get("dataset")
    loaded = runs.load_run(cfg.run, cfg.paths.cache_dir, cfg.paths.outputs_root)
    datamodule = loaded.datamodule(cfg.paths.cache_dir, cfg.batch_size,
                                   OmegaConf.to_container(other, resolve=True) if other else None, cfg.stride)
    folder, ckpt, model = loaded.folder, loaded.checkpoint, loaded.model
    log.info("evaluating %s on the %s split%s", ckpt, cfg.split,
             f", windows {cfg.stride} tokens apart (each target scored once)" if cfg.stride else "")

    limit = cfg.limit_batches
    trainer: L.Trainer = build_trainer(cfg.trainer, **{f"limit_{cfg.split}_batches": limit} if limit is not None else {})
    run = trainer.validate if cfg.split == "val" else trainer.test
    with ddp.job():
        try:
            [metrics] = run(model, datamodule=datamodule, verbose=False)
        except SystemExit:
            if trainer.interrupted:  # Lightning turns Ctrl-C into SystemExit(1): report it as the interrupt it is
                raise KeyboardInterrupt from None
            raise
    if not all(math.isfinite(float(v)) for v in metrics.values()):
        raise ConfigError(f"run={cfg.run}: the {cfg.split} loss of {ckpt.name} is not finite ({dict(metrics)}); "
                          f"the checkpoint's weights are broken")
    result = {"run": str(folder), "checkpoint": str(ckpt), "split": cfg.split, "stride": cfg.stride,
              "dataset": (other or loaded.settings["dataset"]).get("name"),
              "tokens": datamodule.info.get("cache_entry"),  # the token cache read: text, split and tokenizer
              "loss": float(metrics[f"{cfg.split}/loss"]), "ppl": float(metrics[f"{cfg.split}/ppl"]),
              "bpb": float(metrics[f"{cfg.split}/bpb"]) if f"{cfg.split}/bpb" in metrics else None,
              "targets": int(metrics[f"{cfg.split}/targets"]) if f"{cfg.split}/targets" in metrics else None,
              "processes": trainer.world_size}
    if rank_zero_only.rank == 0:
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(json.dumps(result, indent=1))
        log.info("%s: %s loss %.6f, perplexity %.4f, bits per byte %s, over %s targets (written to %s)", ckpt.name,
                 cfg.split, result["loss"], result["ppl"], f"{result['bpb']:.4f}" if result["bpb"] else "n/a",
                 f"{result['targets']:,}" if result["targets"] else "?", out)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """``attnlab evaluate`` / ``python evaluate.py``: one Hydra job; its loss is what a sweeper minimises."""
    result = run_task(evaluate, cfg)
    return None if result is None else result["loss"]
