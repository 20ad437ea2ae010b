"""Checkpoints: written atomically, read once as data (never as code), and matched to the run that resumes them.

* ``CheckpointIO`` writes to a temporary file and renames it into place, and loads with
  ``torch.load(weights_only=True)`` plus an allow-list of the few non-tensor types Lightning saves: a
  checkpoint someone sent you cannot run code.
* ``run_key(cfg)`` is a hash of the run's resolved config (without paths and resume options). It is saved in
  every checkpoint and in ``run.json`` in the run folder, so ``ckpt_path=last`` resumes the same job and
  nothing else: not another seed of a sweep, not another attention type.
* ``resolve(cfg)`` finds the checkpoint to resume, reads it once, refuses one whose model or attention
  settings differ (one line listing the keys), and falls back from a damaged newest checkpoint to the newest
  intact one with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
# config keys that say where a run writes or how it was started, not what it trains
NOT_IN_RUN_KEY = ("ckpt_path", "init_from", "paths", "hydra", "logger", "test_after_fit", "tags", "optimized_metric")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, why, and what to do."""


def _safe_globals() -> list:
    """The non-tensor types a Lightning checkpoint of this project holds (hyper-parameters as plain dicts)."""
    allowed: list = []
    try:
        from lightning.fabric.utilities.data import AttributeDict
        allowed.append(AttributeDict)
    except ImportError:
        pass
    return allowed


def safe_load(path: str | Path) -> dict:
    """Load a checkpoint as data. Raises CheckpointError naming the file when it is unreadable, damaged,
    not a Lightning checkpoint, or would need code to load."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except Exception as e:  # unpickling errors, truncation, foreign globals
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "global" in str(e).lower():
            reason = "it holds Python objects other than tensors and plain data, which would run code to load"
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({reason}); use a checkpoint written by "
                              f"attnlab or start a new run") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return state


class CheckpointIO(TorchCheckpointIO):
    """Atomic saves; safe loads, served from the copy ``resolve`` already read (one read per resume)."""

    def __init__(self, preloaded: tuple[str, dict] | None = None):
        super().__init__()
        self.preloaded = preloaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        if self.preloaded is not None and str(path) == self.preloaded[0]:
            state, self.preloaded = self.preloaded[1], None  # handed over once; not kept alive
            return state
        return safe_load(path)


# --- which run a checkpoint belongs to ------------------------------------------------------------------

def run_key(cfg: DictConfig) -> str:
    """A hash of everything that defines what the run trains: its config resolved with every path replaced by
    its name (a run's folder differs each time it starts; callbacks and the trainer point into it), without
    the resume options and loggers."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    raw["paths"] = {k: f"<paths.{k}>" for k in raw.get("paths", {})}
    placeholder = OmegaConf.create(raw)
    resolved = {k: OmegaConf.to_container(placeholder[k], resolve=True) if OmegaConf.is_config(placeholder[k])
                else placeholder[k] for k in placeholder if k not in NOT_IN_RUN_KEY}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_run_file(output_dir: str | Path, key: str, checkpoint_dir: str | Path) -> None:
    path = Path(output_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_key": key, "checkpoint_dir": str(checkpoint_dir)}, indent=1))


def candidates_for(key: str, outputs_root: str | Path) -> list[Path]:
    """Checkpoints of runs with this run key, newest first: each run's last.ckpt, then its other checkpoints."""
    found: list[Path] = []
    for run_file in Path(outputs_root).glob(f"**/{RUN_FILE}"):
        try:
            info = json.loads(run_file.read_text())
        except (OSError, ValueError):
            continue
        if info.get("run_key") == key:
            found += [p for p in Path(info.get("checkpoint_dir", run_file.parent / "checkpoints")).glob("*.ckpt")]
    return sorted(set(found), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)


def settings_of(cfg: DictConfig) -> dict[str, dict]:
    """The settings a checkpoint's weights depend on: model and attention."""
    return {"model": OmegaConf.to_container(cfg.model, resolve=True),
            "attention": OmegaConf.to_container(cfg.attention, resolve=True)}


def differing_keys(saved: dict, current: dict) -> list[str]:
    keys = []
    for group in ("model", "attention"):
        a, b = saved.get(group) or {}, current.get(group) or {}
        keys += [f"{group}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return keys


def resolve(cfg: DictConfig) -> tuple[str, dict] | None:
    """The checkpoint to resume (path, state) or None. ``ckpt_path=last``: the newest intact checkpoint of
    this run key; a path: that file. Either way the settings must match the run's."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    key = run_key(cfg)
    if ckpt == "last":
        paths = candidates_for(key, cfg.paths.outputs_root)
        if not paths:
            raise CheckpointError(f"ckpt_path=last: no checkpoint of this run (run key {key}) under "
                                  f"{cfg.paths.outputs_root}/; the same command and overrides as the run to "
                                  f"resume are needed, or give a file: ckpt_path=/path/to/file.ckpt")
    else:
        paths = [Path(str(ckpt))]
        if not paths[0].is_file():
            raise CheckpointError(f"ckpt_path={ckpt}: no such file")
    state, errors = None, []
    for path in paths:
        try:
            state = safe_load(path)
            break
        except CheckpointError as e:
            if ckpt != "last":
                raise
            errors.append(str(e))
            log.warning("%s; trying the next newest checkpoint of this run", e)
    if state is None:
        raise CheckpointError(f"ckpt_path=last: every checkpoint of this run is damaged ({errors[0]})")
    saved = state.get("attnlab", {}).get("settings")
    if saved is not None:
        diff = differing_keys(saved, settings_of(cfg))
        if diff:
            raise CheckpointError(f"checkpoint {path} was trained with different settings ({', '.join(diff)}); "
                                  f"resume with the same settings, or start from its weights with "
                                  f"init_from={path}")
    return str(path), state
