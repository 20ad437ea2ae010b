"""Checkpoints: written atomically, read once as data (never as code), and matched to the run that resumes them.

* ``CheckpointIO`` writes to a temporary file and renames it into place, and loads with
  ``torch.load(weights_only=True)`` plus an allow-list of the few non-tensor types Lightning saves: a
  checkpoint someone sent you cannot run code.
* ``run_key(cfg)`` is a hash of the run's resolved config (without paths and resume options). It is saved in
  every checkpoint and in ``run.json`` in the run folder, so ``ckpt_path=last`` resumes the same job and
  nothing else: not another seed of a sweep, not another attention type.
* ``resolve(cfg)`` finds the checkpoint to resume, reads it once, refuses one whose model or attention
  settings differ (one line listing the keys), and falls back from a damaged newest checkpoint to the newest
  intact one with a warning. ``ckpt_path=last`` takes the newest *run folder* of this run key (and says
  which), never a mix of two runs' files; the resumed run goes on writing into that folder.
* Every checkpoint carries a SHA-256 of all its tensors, checked on load: damage that keeps the file's shape
  (flipped bytes) is found, not trained or evaluated on. Weights holding NaN or inf are never written.
* Nothing recorded is an absolute path: a run's checkpoints are always ``<run folder>/checkpoints``, so a run
  folder or a whole outputs tree moved or copied elsewhere resumes, samples and evaluates from where it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from attnlab import run_folder
from attnlab.errors import CheckpointError  # (re-exported: callers name it from here)
from attnlab.run_folder import RunFolder

log = logging.getLogger(__name__)

RUN_FILE = run_folder.RECORD
CHECKPOINT_DIR = run_folder.CHECKPOINTS  # inside the run folder, always: nothing records where that folder is
DIGEST_KEY = "attnlab_digest"  # the checkpoint's own SHA-256 of its contents
FORMAT = 2  # checkpoint["attnlab"]["format"]; from 2 on every checkpoint carries its digest
# config keys that say where a run writes or how it was started, not what it trains
NOT_IN_RUN_KEY = ("ckpt_path", "init_from", "paths", "hydra", "logger", "test_after_fit", "validate_first",
                  "tags", "optimized_metric")
# ... and settings that change how a run is computed or shown, not what it trains: resuming with threads=1 (or
# another number of loader workers, the progress bar off, callbacks that only record) is the same run
EXECUTION = {"": ("threads", "callbacks"), "data": ("num_workers", "verify", "cache_dir", "eval_batch_size"),
             "trainer": ("log_every_n_steps", "enable_model_summary", "enable_progress_bar", "default_root_dir",
                         "benchmark")}


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
    weights = state["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (its state_dict is not a mapping of "
                              f"names to tensors)")
    if not isinstance(state.get("attnlab", {}), dict):
        raise CheckpointError(f"checkpoint {path} is damaged (its 'attnlab' record is not a mapping)")
    bloated = views_beyond_storage(state)
    if bloated:  # e.g. zeros(1).expand(2**33): a 1 MB file whose digest (a contiguous copy) would need 32 GiB
        raise CheckpointError(f"checkpoint {path} is not a plain checkpoint: its tensor {bloated} views more "
                              f"elements than the file stores for it")
    saved = state.pop(DIGEST_KEY, None)
    fmt = (state.get("attnlab") or {}).get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise CheckpointError(f"checkpoint {path} is damaged (its format {fmt!r} is not a whole number >= 1)")
    if saved is None and fmt >= FORMAT:
        raise CheckpointError(f"checkpoint {path} is damaged (its checksum is missing)")
    if saved is None:  # written before checkpoints carried a digest, or by another program: nothing to check
        log.warning("checkpoint %s carries no checksum (format %d, from before 2026-11-26 or not written by attnlab): "
                    "bytes changed on disk would go unnoticed", path, fmt)
    if saved is not None and saved != tensor_digest(state):
        raise CheckpointError(f"checkpoint {path} is damaged (its contents do not match the checksum written with "
                              f"them: the file changed on disk); use another checkpoint of the run or start again")
    return state


def views_beyond_storage(obj, where: str = "") -> str | None:
    """The key path of the first tensor that views more elements than its storage holds (a stride-0 expand
    saved to disk), else None: reading one whole would allocate what the file never held."""
    if isinstance(obj, torch.Tensor):
        return where or "." if obj.numel() * obj.element_size() > obj.untyped_storage().nbytes() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = views_beyond_storage(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def tensor_digest(obj) -> str:
    """SHA-256 over the whole checkpoint: every tensor's bytes, dtype and shape, and every other value (step
    counts, optimizer settings, scores) by its exact repr, each with its key path."""
    h = hashlib.sha256()

    def walk(o, where: str) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"{where}:{t.dtype}:{tuple(o.shape)};".encode())
            if t.numel():
                h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                if k != DIGEST_KEY:
                    walk(o[k], f"{where}/{k}")
        elif isinstance(o, (list, tuple)):
            h.update(f"{where}:{type(o).__name__}{len(o)};".encode())
            for i, v in enumerate(o):
                walk(v, f"{where}[{i}]")
        elif isinstance(o, (set, frozenset)):  # no fixed order: hash them sorted
            h.update(f"{where}={type(o).__name__}:{sorted(map(repr, o))!r};".encode())
        else:
            h.update(f"{where}={type(o).__name__}:{o!r};".encode())
    walk(obj, "")
    return h.hexdigest()


def non_finite_weights(state_dict: dict) -> list[str]:
    """Names of floating-point tensors holding NaN or inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


class CheckpointIO(TorchCheckpointIO):
    """Atomic saves; safe loads, served from the copy ``resolve`` already read (one read per resume)."""

    def __init__(self, preloaded: tuple[str, dict] | None = None):
        super().__init__()
        self.preloaded = preloaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        bad = non_finite_weights(checkpoint.get("state_dict", {}))
        if bad:  # a diverged step must not replace the last good checkpoint
            log.warning("not writing %s at step %s: %d weight tensors hold NaN or inf (first: %s); the previous "
                        "checkpoint is kept", path.name, checkpoint.get("global_step"), len(bad), bad[0])
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save({**checkpoint, DIGEST_KEY: tensor_digest(checkpoint)}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        if self.preloaded is not None and str(path) == self.preloaded[0]:
            state, self.preloaded = self.preloaded[1], None  # handed over once; not kept alive
            return state
        return safe_load(path)


# --- which run a checkpoint belongs to ------------------------------------------------------------------

def run_key(cfg: DictConfig, legacy: bool | str = False) -> str:
    """A hash of everything that defines what the run trains: its config resolved with every path replaced by
    its name (a run's folder differs each time it starts; callbacks and the trainer point into it), without
    the resume options, loggers and execution settings (``EXECUTION``). ``legacy``: the key as an earlier
    version computed it, so that its runs' checkpoints still resume: "2026-12-05" (data also repeated the
    dataset and tokenizer settings), "2026-12-04" or True (execution settings included too)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    raw["paths"] = {k: f"<paths.{k}>" for k in raw.get("paths", {})}
    placeholder = OmegaConf.create(raw)
    resolved = {k: OmegaConf.to_container(placeholder[k], resolve=True) if OmegaConf.is_config(placeholder[k])
                else placeholder[k] for k in placeholder if k not in NOT_IN_RUN_KEY}
    if isinstance(resolved.get("model"), dict) and resolved["model"].get("n_kv_head", 0) is None:
        resolved["model"] = {k: v for k, v in resolved["model"].items() if k != "n_kv_head"}  # (added 2026-12-05:
        #   at its default, multi-head, a run is the one it was before the setting existed)
    if isinstance(resolved.get("data"), dict) and resolved["data"].get("document_mask", True) is False:
        resolved["data"] = {k: v for k, v in resolved["data"].items() if k != "document_mask"}  # (likewise: off is
        #   the run as it was before document masking existed)
    era = "2026-12-04" if legacy is True else legacy or None
    if era in ("2026-12-05", "2026-12-04") and isinstance(resolved.get("data"), dict):
        # until 2026-12-05 the data section repeated ${dataset} and ${tokenizer} (read from nowhere)
        resolved["data"] = {**resolved["data"], "dataset": resolved.get("dataset"), "tokenizer": resolved.get("tokenizer")}
    if era != "2026-12-04":
        resolved = without_execution(resolved)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def without_execution(config: dict) -> dict:
    """A copy of a plain config without the ``EXECUTION`` settings (the run key's and report.py's one rule)."""
    out = {k: v for k, v in config.items() if k not in EXECUTION[""]}
    for section, keys in EXECUTION.items():
        if section and isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def run_keys(cfg: DictConfig) -> tuple[str, ...]:
    """This run's key, then the keys the same command gave in earlier versions (any of them identifies its
    checkpoints)."""
    return (run_key(cfg), run_key(cfg, legacy="2026-12-05"), run_key(cfg, legacy="2026-12-04"))


def write_run_file(output_dir: str | Path, key: str, **facts) -> None:
    """``run.json``: the run key (what ``ckpt_path=last`` matches) and facts about the run (RunFolder's record)."""
    RunFolder(output_dir).write_record(run_key=key, **facts)


def read_run_file(folder: str | Path) -> dict:
    """A run folder's run.json as plain values ({} when missing or unreadable)."""
    return RunFolder(folder).record()


def step_of(path: Path) -> int:
    """The training step a checkpoint holds, read without loading its tensors (-1 when unreadable)."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state.get("global_step", -1)) if isinstance(state, dict) else -1
    except Exception:
        return -1


def checkpoints_in(folder: str | Path) -> list[Path]:
    """A run folder's checkpoints, furthest trained first (by the step inside, not the file time, which a copy
    resets; last.ckpt first at equal steps); unreadable ones last."""
    ckpts = [p for p in (Path(folder) / CHECKPOINT_DIR).glob("*.ckpt") if p.is_file()]
    return sorted(ckpts, key=lambda p: (step_of(p), p.name == "last.ckpt", p.stat().st_mtime), reverse=True)


def runs_for(key: str | tuple[str, ...], outputs_root: str | Path) -> list[Path]:
    """Run folders with this run key (or any of these keys) that hold a checkpoint, newest checkpoint first."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    found = []
    for run_file in Path(outputs_root).glob(f"**/{RUN_FILE}"):
        folder = run_file.parent
        if read_run_file(folder).get("run_key") in keys and (ckpts := checkpoints_in(folder)):
            found.append((ckpts[0].stat().st_mtime, folder))
    return [f for _, f in sorted(found, reverse=True)]


def settings_of(cfg: DictConfig) -> dict[str, dict]:
    """The settings a checkpoint's weights depend on: model and attention, and whether attention stays within
    documents (``data.document_mask``: the model reads windows differently)."""
    return {"model": OmegaConf.to_container(cfg.model, resolve=True),
            "attention": OmegaConf.to_container(cfg.attention, resolve=True),
            "data": {"document_mask": bool(cfg.data.get("document_mask", False))}}


def differing_keys(saved: dict, current: dict) -> list[str]:
    """The model and attention settings that differ (model.name is a label, not a shape: a run's spec records
    its names apart)."""
    keys = []
    for group in ("model", "attention"):
        a, b = saved.get(group) or {}, current.get(group) or {}
        keys += [f"{group}.{k}" for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k) and (group, k) != ("model", "name")]
    masked = [bool((s.get("data") or {}).get("document_mask", False)) for s in (saved, current)]  # (none before 2026-12-05)
    return keys + (["data.document_mask"] if masked[0] != masked[1] else [])


class Resume(NamedTuple):
    path: str  # the checkpoint file
    state: dict  # its contents, read once
    folder: Path | None  # the run folder it belongs to (records continue there), None for a foreign file


def _run_folder_of(ckpt: Path) -> Path | None:
    folder = ckpt.resolve().parent.parent
    return folder if ckpt.resolve().parent.name == CHECKPOINT_DIR and (folder / RUN_FILE).is_file() else None


def resolve(cfg: DictConfig) -> Resume | None:
    """The checkpoint to resume, or None. ``ckpt_path=last``: the newest run folder of this run key, its newest
    intact checkpoint; a run folder: its newest intact checkpoint; a file: that file. Either way the settings
    must match the run's."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    keys = run_keys(cfg)
    key = keys[0]
    folder: Path | None = None
    if ckpt == "last":
        folders = runs_for(keys, cfg.paths.outputs_root)
        if not folders:
            raise CheckpointError(f"ckpt_path=last: no checkpoint of this run (run key {key}) under "
                                  f"{cfg.paths.outputs_root}/; the same command and overrides as the run to "
                                  f"resume are needed, or give a run folder or a file: ckpt_path=<path>")
        folder = folders[0]
        if len(folders) > 1:
            log.warning("ckpt_path=last: %d runs have this config; resuming the newest, %s (give "
                        "ckpt_path=<run folder> to take another: %s)", len(folders), folder,
                        ", ".join(map(str, folders[1:4])))
        paths = checkpoints_in(folder)
    elif Path(str(ckpt)).is_dir():
        folder = Path(str(ckpt))
        paths = checkpoints_in(folder)
        if not paths:
            raise CheckpointError(f"ckpt_path={ckpt}: no checkpoint in {folder / CHECKPOINT_DIR}")
    else:
        paths = [Path(str(ckpt))]
        if not paths[0].is_file():
            raise CheckpointError(f"ckpt_path={ckpt}: no such file or run folder")
        folder = _run_folder_of(paths[0])
    state, errors = None, []
    if len(paths) > 1:  # unreadable files are ranked last; say so now, the next newest is taken
        readable = [p for p in paths if step_of(p) >= 0]
        for p in paths:
            if p not in readable:
                try:
                    safe_load(p)
                except CheckpointError as e:
                    log.warning("%s; trying the next newest checkpoint of this run", e)
                    errors.append(str(e))
        paths = readable or paths
    for path in paths:
        try:
            state = safe_load(path)
            saved_key = state.get("attnlab", {}).get("run_key")
            if ckpt == "last" and saved_key not in (None, *keys):
                raise CheckpointError(f"checkpoint {path} belongs to another run (run key {saved_key}, this run's "
                                      f"is {key})")
            break
        except CheckpointError as e:
            if len(paths) == 1 and ckpt != "last":
                raise
            state = None
            errors.append(str(e))
            log.warning("%s; trying the next newest checkpoint of this run", e)
    if state is None:
        raise CheckpointError(f"ckpt_path={ckpt}: every checkpoint of this run is damaged ({errors[0]})")
    saved = state.get("attnlab", {}).get("settings")
    if saved is not None:
        diff = differing_keys(saved, settings_of(cfg))
        if diff:
            raise CheckpointError(f"checkpoint {path} was trained with different settings ({', '.join(diff)}); "
                                  f"resume with the same settings, or start from its weights with "
                                  f"init_from={path}")
    return Resume(str(path), state, folder)  # a file named explicitly continues its own run folder
