"""Text from a trained run: ``python sample.py run=<folder|.ckpt|last> prompt="ROMEO:" num_samples=3``.

The model and tokenizer are rebuilt from the run's own saved config; decoding uses the attention type's KV
cache (``kv_cache.py``). Samples are printed and written, with the settings and the speed, to
``samples.json`` in this command's output folder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from attnlab import runs
from attnlab import schema
from attnlab.schema import ConfigError
from attnlab.cli import run_task
from attnlab.commands import CONFIG_PATH

log = logging.getLogger(__name__)


def check_settings(cfg: DictConfig) -> None:
    schema.check_command("sample", cfg)
    schema.check(cfg)  # any ruled setting of the shared groups


def read_prompt(cfg: DictConfig) -> str:
    if not cfg.get("prompt_file"):
        return unescape(str(cfg.prompt)) if cfg.escapes else str(cfg.prompt)
    path = Path(cfg.prompt_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"prompt_file={cfg.prompt_file}: {'a folder' if path.is_dir() else 'no such file'}; give a "
                          f"UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"prompt_file={cfg.prompt_file}: not UTF-8 text (byte {e.start}); give a text file") from None


def unescape(text: str) -> str:
    """\\n, \\t and \\\\ as a shell passes them (two characters) -> newline, tab, backslash."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; characters a character vocabulary lacks are an error, not silent <unk>s."""
    ids = tokenizer.encode(prompt)
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids:
        missing = sorted({c for c in prompt if tokenizer.encode(c) == [unk]})
        raise ConfigError(f"prompt={prompt!r} has characters the run's tokenizer does not know: {missing} (its "
                          f"vocabulary is the {tokenizer.vocab_size - 2} characters of its training text)")
    return ids or [tokenizer.eos_id]  # nothing: start where a document starts, after an end-of-sequence token


def device_and_autocast(setting: str, precision: str):
    """The device, and the autocast context that matches the run's training precision there."""
    device = torch.device("cuda" if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda needs a CUDA GPU and none is visible here; use device=auto or device=cpu")
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else None
    if dtype is None or device.type == "cpu":  # half precision on a CPU is slower than fp32 and no better
        return device, contextlib.nullcontext(), "float32"
    return device, torch.autocast("cuda", dtype=dtype), str(dtype).removeprefix("torch.")


def sample(cfg: DictConfig) -> list[str]:
    check_settings(cfg)
    prompt = read_prompt(cfg)
    loaded = runs.load_run(cfg.run, cfg.paths.cache_dir, cfg.paths.outputs_root)
    tokenizer = loaded.tokenizer
    ids = encode_prompt(tokenizer, prompt)
    trainer = loaded.cfg.get("trainer") if isinstance(loaded.cfg.get("trainer"), dict) else {}
    precision = trainer.get("precision", 32)
    device, autocast, dtype = device_and_autocast(cfg.device, str(precision))  # a raw value, never resolved
    model = loaded.model.model.to(device).eval()
    log.info("sampling from %s (%s attention, %s positions) on %s in %s, %s", loaded.checkpoint,
             model.attention.name, model.cfg.positions, device, dtype, "with the KV cache" if cfg.use_cache else
             "recomputing every token (use_cache=false)")

    generator = torch.Generator(device).manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)  # (num_samples, T)
    started = time.perf_counter()
    with autocast:
        out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.use_cache, generator)
    seconds = time.perf_counter() - started
    texts = [tokenizer.decode(row[len(ids):].tolist()) for row in out]  # the continuations
    rate = cfg.num_samples * cfg.max_new_tokens / seconds
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} of {len(texts)} ---\n{prompt}{text}")
    log.info("%d x %d tokens in %.2f s (%.0f tokens/s)", cfg.num_samples, cfg.max_new_tokens, seconds, rate)
    record = {"run": str(loaded.folder), "checkpoint": str(loaded.checkpoint), "prompt": prompt,
              "settings": {k: cfg.get(k) for k in ("max_new_tokens", "temperature", "top_k", "seed", "use_cache")},
              "device": str(device), "dtype": dtype, "seconds": seconds, "tokens_per_s": rate, "samples": texts}
    (Path(cfg.paths.output_dir) / "samples.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
    return texts


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
def main(cfg: DictConfig) -> None:
    """``attnlab sample`` / ``python sample.py``: one Hydra job."""
    run_task(sample, cfg)
