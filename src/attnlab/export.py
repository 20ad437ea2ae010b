"""``python export.py run=<run> out=<folder>``: a run as a Hugging Face GPT-2 folder (config.json,
model.safetensors, tokenizer.json), for the runs Hugging Face's GPT-2 computes as they are: full or flash
attention, learned positions, GPT-2's shape (biases, tied embeddings, the tanh GELU). Any other run is refused
in one line naming what GPT-2 cannot represent. ``pretrained.py`` reads such a folder back losslessly."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from attnlab import runs, schema
from attnlab.pretrained import LAYER_NORMS, LINEARS
from attnlab.schema import ConfigError
from attnlab.cli import run_task
from attnlab.commands import CONFIG_PATH

log = logging.getLogger(__name__)
GPT2_ATTENTION = ("full", "flash")  # the pattern GPT-2 computes: every earlier token


def unsupported(model) -> list[str]:
    """What a Hugging Face GPT-2 cannot represent of this model ([] when it can)."""
    cfg, att = model.cfg, model.attention
    problems = []
    if att.name not in GPT2_ATTENTION or not att.causal:
        problems.append(f"attention={att.name}{'' if att.causal else ' (bidirectional)'} (GPT-2 attends to every "
                        f"earlier token: full or flash, causal)")
    if cfg.positions != "learned":
        problems.append(f"model.positions={cfg.positions} (GPT-2 has a learned position table)")
    if not cfg.bias:
        problems.append("model.bias=false (GPT-2's linear layers and LayerNorms have biases)")
    if not cfg.tie_weights:
        problems.append("model.tie_weights=false (GPT-2 ties its output head to the token embedding)")
    if cfg.kv_heads != cfg.n_head:
        problems.append(f"model.n_kv_head={cfg.n_kv_head} (GPT-2 has a key and a value head per query head)")
    if cfg.document_end is not None:
        problems.append("data.document_mask=true (GPT-2 attends across the end-of-text tokens of a packed window)")
    if cfg.activation != "gelu_tanh":
        problems.append(f"model.activation={cfg.activation} (GPT-2 uses gelu_tanh)")
    return problems


def to_hugging_face(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, GPT2LMHeadModel state dict) of a ``model.GPT``; nn.Linear (out, in) -> Conv1D (in, out)."""
    cfg = model.cfg
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(cfg.n_layer):
        for theirs, ours in LAYER_NORMS.items():
            for p in ("weight", "bias"):
                out[f"transformer.h.{i}.{theirs}.{p}"] = sd[f"blocks.{i}.{ours}.{p}"]
        for theirs, ours in LINEARS.items():
            out[f"transformer.h.{i}.{theirs}.weight"] = sd[f"blocks.{i}.{ours}.weight"].t().contiguous()
            out[f"transformer.h.{i}.{theirs}.bias"] = sd[f"blocks.{i}.{ours}.bias"]
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
              "n_positions": cfg.context, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
              "n_inner": cfg.d_ff, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
              "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0, "tie_word_embeddings": True}
    return config, out


def export(cfg: DictConfig) -> Path:
    schema.check_command("export", cfg)
    loaded = runs.load_run(cfg.run, cfg.paths.cache_dir, cfg.paths.outputs_root)
    model = loaded.model.model
    problems = unsupported(model)
    if problems:
        raise ConfigError(f"run={cfg.run} cannot be a Hugging Face GPT-2: {'; '.join(problems)}")
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out} is a file; give a new folder")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={cfg.out} is not empty; give a new folder")
    config, state = to_hugging_face(model)
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_id
    config.update(bos_token_id=eos, eos_token_id=eos)  # GPT-2's 50256 is outside a small vocabulary
    from safetensors.torch import save_file
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():  # left by an interrupted export: its files must not end up in this one
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    text = tokenizer.as_tokenizers_json()  # a real tokenizers file, the char tokenizer's too
    (tmp / "tokenizer.json").write_text(text)
    from tokenizers import Tokenizer
    eos_token = Tokenizer.from_str(text).id_to_token(eos)
    (tmp / "tokenizer_config.json").write_text(json.dumps(  # read as it is, not re-made as GPT-2's byte-level BPE
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eos_token, "eos_token": eos_token,
         **({"unk_token": "<|unk|>"} if tokenizer.kind == "char" else {})}, indent=1))
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the folder appears whole or not at all
    log.info("run %s exported as a Hugging Face GPT-2 folder: %s", loaded.folder, out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    """``attnlab export`` / ``python export.py``: one Hydra job."""
    run_task(export, cfg)
