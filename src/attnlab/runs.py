"""A finished (or stopped) run, rebuilt from its own folder: its config, checkpoint, tokenizer and model.

``run=`` names a run folder (the one with ``.hydra/config.yaml``; its best checkpoint is used, else
``last.ckpt``), a ``.ckpt`` file inside one, a sweep's job by number (``outputs/multirun/<date>/3``: its
folder's name holds ``=`` and ``,``, which Hydra's command line would need quoted), or ``last`` (the newest run under ``outputs_root`` that has a
checkpoint). Used by ``evaluate.py`` and ``sample.py``: nothing of the training command needs repeating.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from attnlab import checkpoints
from attnlab.attention import build_attention
from attnlab.lit import LitGPT
from attnlab.model import GPTConfig
from attnlab.schema import ConfigError, check_fields

log = logging.getLogger(__name__)


def checkpoints_of(folder: Path) -> list[Path]:
    """A run folder's checkpoints, newest first."""
    info = folder / checkpoints.RUN_FILE
    ckpt_dir = Path(json.loads(info.read_text())["checkpoint_dir"]) if info.is_file() else folder / "checkpoints"
    return sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)


def newest_run(outputs_root: str | Path) -> Path:
    root = Path(str(outputs_root)).expanduser()
    folders = [p.parents[1] for p in root.glob("**/.hydra/config.yaml")]
    with_ckpt = [(max(c.stat().st_mtime for c in ckpts), f) for f in folders if (ckpts := checkpoints_of(f))]
    if not with_ckpt:
        raise ConfigError(f"run=last: no run folder with a checkpoint under {root} (train one first)")
    return max(with_ckpt)[1]


def find_run(run: str, outputs_root: str | Path = "outputs") -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``run=`` a folder, a .ckpt file or ``last``."""
    if str(run) == "last":
        run = str(newest_run(outputs_root))
    path = Path(str(run)).expanduser()
    if not path.exists() and path.parent.is_dir():  # a sweep's job by number: <sweep folder>/<n> -> <n>-<overrides>
        jobs = [p for p in path.parent.iterdir() if p.is_dir() and p.name.startswith(f"{path.name}-")]
        path = jobs[0] if len(jobs) == 1 else path
    if not path.exists():
        raise ConfigError(f"run={run}: no such file or folder (give a run folder under outputs/, a .ckpt file, "
                          f"a sweep's job as <sweep folder>/<job number>, or run=last)")
    if path.is_file():
        folder = next((p for p in path.parents if (p / ".hydra" / "config.yaml").is_file()), None)
        if folder is None:
            raise ConfigError(f"run={run}: no run folder (with .hydra/config.yaml) above this checkpoint, so its "
                              f"model and data settings are unknown")
        return folder, path
    if not (path / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"run={run}: not a run folder (it has no .hydra/config.yaml)")
    ckpts = checkpoints_of(path)
    best = [p for p in ckpts if p.name != "last.ckpt"]  # best_checkpoint's file: ranked by its own validation
    if not ckpts:
        raise ConfigError(f"run={run}: the run folder has no checkpoint (was it stopped before its first one, or "
                          f"run with callbacks.last_checkpoint=null?)")
    return path, (best or ckpts)[0]


@dataclass
class Run:
    folder: Path
    checkpoint: Path
    cfg: DictConfig  # the run's own resolved config
    model: LitGPT  # weights loaded, on the CPU
    datamodule: object  # attnlab.data.datamodule.TextDataModule, prepared (tokenizer loaded)


def load_run(run: str, cache_dir: str, outputs_root: str | Path = "outputs",
             eval_batch_size: int | None = None, dataset: dict | None = None) -> Run:
    """The run, its weights and its data; ``dataset`` (a dataset config) replaces the run's own text, encoded
    with the run's tokenizer (not one trained on the new text), so the model reads what it was trained to."""
    folder, ckpt = find_run(run, outputs_root)
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
                    context=run_cfg.model.context, cache_dir=cache_dir, seed=run_cfg.seed, overfit_batches=0)
    if eval_batch_size:
        data_cfg["eval_batch_size"] = eval_batch_size
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    if dataset is not None:
        data_cfg.update(dataset=dict(dataset), tokenizer_from=datamodule.info["cache_entry"])
        datamodule = hydra.utils.instantiate(data_cfg)
        datamodule.prepare_data()
        unk = getattr(datamodule.tokenizer, "unk_id", None)
        for split, tokens in datamodule.tokens.items():
            n_unk = int((tokens == unk).sum()) if unk is not None else 0
            if n_unk:
                log.warning("%s split: %d of %d tokens (%.2f%%) are characters the run's tokenizer never saw "
                            "(<unk>)", split, n_unk, len(tokens), 100 * n_unk / len(tokens))
    model = LitGPT(GPTConfig(**{**model_cfg, "vocab_size": datamodule.vocab_size}), attention)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"run={run}: checkpoint {ckpt} does not fit the model and tokenizer of its run's config "
                          f"({str(e).splitlines()[-1].strip()[:200]})") from e
    return Run(folder, ckpt, run_cfg, model, datamodule)
