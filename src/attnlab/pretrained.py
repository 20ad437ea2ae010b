"""Pretrained GPT-2 weights from Hugging Face, in this project's model, under any attention type.

``init_from=hf:gpt2`` (a hub id, read through the Hugging Face cache) or ``init_from=/path/to/folder`` (a local
folder with ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, and the tokenizer files) gives the
model its GPT-2 shape, activation, LayerNorm epsilon and biases, its weights and its tokenizer. The attention
type only changes which keys each query sees. A ``model.context`` longer than the checkpoint's copies its
learned position embeddings over the longer table (Longformer, Beltagy et al. 2020, section 5).

Reading uses ``safetensors`` and ``huggingface_hub`` (both come with ``datasets``); ``transformers`` is not
needed. Weights load as data (``weights_only=True`` for ``.bin``); ``config.json`` is read as plain values.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from attnlab.schema import ConfigError

log = logging.getLogger(__name__)
HUB_PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
LAYER_NORMS = {"ln_1": "ln_attn", "ln_2": "ln_mlp"}  # GPT-2's names -> this project's, per block
LINEARS = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
MAX_PARAMS = 4_000_000_000  # a config.json describing more is refused before anything is allocated
BUFFERS = (".attn.bias", ".attn.masked_bias")  # GPT-2's causal-mask buffers in older checkpoints: not weights
SHAPE_KEYS = ("n_layer", "n_head", "d_model", "d_ff", "bias", "tie_weights", "activation", "layer_norm_eps")


def is_source(value) -> bool:
    """``hf:<hub id>``, or a local folder holding a Hugging Face ``config.json``."""
    value = str(value or "")
    return value.startswith(HUB_PREFIX) or (Path(value).expanduser() / "config.json").is_file()


def fetch(source: str, cache_dir: str | Path | None = None, what: str = "init_from") -> Path:
    """The local folder of ``source``: downloaded (or found in the Hugging Face cache) for ``hf:<id>``."""
    if source.startswith(HUB_PREFIX):
        repo = source[len(HUB_PREFIX):]
        try:
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(repo, allow_patterns=["config.json", *WEIGHT_FILES, *TOKENIZER_FILES],
                                          cache_dir=str(Path(cache_dir).expanduser() / "hf") if cache_dir else None))
        except Exception as e:  # offline, unknown repository, no permission: all one message to the user
            raise ConfigError(f"{what}={source}: could not get {repo!r} from the Hugging Face hub "
                              f"({type(e).__name__}); offline, download it where the hub is reachable "
                              f"(huggingface-cli download {repo}) and give the folder: {what}=/path/to/folder")
    folder = Path(source).expanduser()
    missing = [f for f in ("config.json",) if not (folder / f).is_file()]
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not (folder / "tokenizer.json").is_file() and not all((folder / f).is_file() for f in TOKENIZER_FILES[1:]):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise ConfigError(f"{what}={source}: not a Hugging Face model folder (missing {', '.join(missing)})")
    return folder


def model_settings(folder: Path, what: str = "init_from") -> dict:
    """GPTConfig fields from a GPT-2 ``config.json``."""
    try:
        from attnlab import plain_yaml
        hf = plain_yaml.load_json(folder / "config.json")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}={folder}: config.json cannot be read ({e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        raise ConfigError(f"{what}={folder}: model_type={hf.get('model_type') if isinstance(hf, dict) else None!r}; "
                          f"only GPT-2 checkpoints (model_type 'gpt2') convert to this project's model")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConfigError(f"{what}={folder}: activation_function={act!r}; valid: {sorted(ACTIVATIONS)}")

    def whole(key: str, high: int, default=None) -> int:
        """A size from config.json: a whole number in [1, high] (true, 2.7 or "2" are not sizes)."""
        value = hf.get(key, default)
        if value is None:
            raise ConfigError(f"{what}={folder}: config.json has no {key}")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
            raise ConfigError(f"{what}={folder}: config.json has {key}={value!r}; it must be a whole number in "
                              f"[1, {high:,}]")
        return value
    n_layer, n_head, d_model = whole("n_layer", 256), whole("n_head", 256), whole("n_embd", 1 << 16)
    context, vocab = whole("n_positions", 1 << 20), whole("vocab_size", 1 << 21)
    d_ff = whole("n_inner", 1 << 18) if hf.get("n_inner") is not None else 4 * d_model
    if d_model % n_head:
        raise ConfigError(f"{what}={folder}: config.json has n_embd={d_model} not divisible by n_head={n_head}")
    params = n_layer * (4 * d_model * d_model + 2 * d_model * d_ff) + (vocab + context) * d_model
    if params > MAX_PARAMS:  # before anything is allocated: a crafted config asked for 12 TB
        raise ConfigError(f"{what}={folder}: config.json describes {params / 1e9:,.1f}B parameters, more than the "
                          f"{MAX_PARAMS / 1e9:.0f}B this project loads (GPT-2 XL has 1.6B)")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ConfigError(f"{what}={folder}: config.json has layer_norm_epsilon={eps!r}; it must be in (0, 1)")
    tie = hf.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise ConfigError(f"{what}={folder}: config.json has tie_word_embeddings={tie!r}; it must be true or false")
    return {"n_layer": n_layer, "n_head": n_head, "d_model": d_model, "d_ff": d_ff, "context": context,
            "vocab_size": vocab, "bias": True, "tie_weights": tie, "activation": ACTIVATIONS[act],
            "layer_norm_eps": float(eps), "positions": "learned"}


def merge_settings(model_cfg: dict, pretrained: dict, explicit: dict, source: str) -> dict:
    """The run's model settings: the checkpoint's shape, the run's dropout, and a longer context if asked for.
    ``explicit``: model settings given on the command line; one that contradicts the checkpoint is refused."""
    clash = [f"model.{k}={explicit[k]!r} (the checkpoint has {pretrained[k]!r})" for k in (*SHAPE_KEYS, "positions")
             if k in explicit and explicit[k] != pretrained[k]]
    if clash:
        raise ConfigError(f"init_from={source}: {', '.join(clash)}; drop these settings (the checkpoint decides "
                          f"them; they come from the command line or the experiment preset)")
    context = explicit.get("context", pretrained["context"])
    if context < pretrained["context"]:
        log.info("init_from=%s: model.context=%d uses the first %d of its %d positions", source, context, context,
                 pretrained["context"])
    merged = {**model_cfg, **{k: v for k, v in pretrained.items() if k != "vocab_size"}, "context": context}
    return merged


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(str(folder / "model.safetensors"), device="cpu")
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    from attnlab.checkpoints import views_beyond_storage
    bloated = views_beyond_storage(state)
    if bloated:  # a stride-0 view would be allocated whole by the conversion (32 GiB from a 33 kB file)
        raise ValueError(f"its tensor {bloated} views more elements than the file stores for it")
    return state


def convert(hf: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 names -> this project's GPT names. GPT-2 stores its linear layers as Conv1D, weights
    (in, out): they are transposed to nn.Linear's (out, in). Every tensor of the file must be used: one left over
    (a layer beyond config.json's n_layer) means the folder is not the model its config says."""
    hf = {k.removeprefix("transformer."): v for k, v in hf.items() if not k.endswith(BUFFERS)}
    used = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"}
    used |= {f"h.{i}.{a}.{p}" for i in range(n_layer) for a in (*LAYER_NORMS, *LINEARS) for p in ("weight", "bias")}
    extra = sorted(set(hf) - used)
    if extra:
        raise ValueError(f"its weights hold {len(extra)} tensors its config.json does not describe (e.g. {extra[0]!r})")
    out = {"tok_emb.weight": hf["wte.weight"], "pos_emb.weight": hf["wpe.weight"],
           "ln_f.weight": hf["ln_f.weight"], "ln_f.bias": hf["ln_f.bias"]}
    for i in range(n_layer):
        for a, b in LAYER_NORMS.items():
            out[f"blocks.{i}.{b}.weight"], out[f"blocks.{i}.{b}.bias"] = hf[f"h.{i}.{a}.weight"], hf[f"h.{i}.{a}.bias"]
        for a, b in LINEARS.items():
            out[f"blocks.{i}.{b}.weight"] = hf[f"h.{i}.{a}.weight"].t().contiguous()  # (in, out) -> (out, in)
            out[f"blocks.{i}.{b}.bias"] = hf[f"h.{i}.{a}.bias"]
    out["head.weight"] = hf.get("lm_head.weight", hf["wte.weight"])
    return out


def load_into(gpt, folder: Path, source: str, what: str = "init_from") -> None:
    """Copy a GPT-2 folder's weights into ``gpt`` (a ``model.GPT`` of the matching shape); a longer position
    table is filled by repeating the checkpoint's positions."""
    try:
        state = convert(read_weights(folder), gpt.cfg.n_layer)
    except KeyError as e:
        raise ConfigError(f"{what}={source}: its weights lack {e.args[0]!r}; not a GPT-2 checkpoint") from None
    except ValueError as e:
        raise ConfigError(f"{what}={source}: {e}") from None
    except Exception as e:  # a damaged file
        raise ConfigError(f"{what}={source}: its weights cannot be read ({type(e).__name__}: {e})") from None
    table = state["pos_emb.weight"]  # (n_positions, C)
    if gpt.pos_emb is not None and gpt.cfg.context != table.shape[0]:
        n = table.shape[0]
        reps = -(-gpt.cfg.context // n)
        state["pos_emb.weight"] = table.repeat(reps, 1)[:gpt.cfg.context]  # (context, C)
        if gpt.cfg.context > n:
            log.info("%s=%s: model.context=%d > its %d positions: the position embeddings are copied %d "
                     "times to fill the longer table (Longformer's initialisation)", what, source, gpt.cfg.context, n,
                     reps)
    if gpt.pos_emb is None:
        state.pop("pos_emb.weight")
    own = gpt.state_dict()
    if state["tok_emb.weight"].shape[0] != own["tok_emb.weight"].shape[0]:
        raise ConfigError(f"{what}={source}: its vocabulary has {state['tok_emb.weight'].shape[0]} tokens, the "
                          f"run's tokenizer {own['tok_emb.weight'].shape[0]}; use the checkpoint's tokenizer")
    if gpt.fill_global_projections(state):
        log.info("%s=%s: the global projections start as copies of the shared ones", what, source)
    if gpt.pool_kv_heads(state):
        log.info("%s=%s: GPT-2's %d key/value heads mean-pooled into %d per layer (grouped-query uptraining)", what,
                 source, gpt.cfg.n_head, gpt.cfg.kv_heads)
    wrong = [f"{k} {tuple(v.shape)} (the model's {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ConfigError(f"{what}={source}: its weights do not have the shapes its config.json gives "
                          f"({'; '.join(wrong[:2])})")
    missing, unexpected = gpt.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise ConfigError(f"{what}={source}: its weights do not fit this model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    log.info("initial weights from %s (GPT-2: %d layers, %d wide)", source, gpt.cfg.n_layer, gpt.cfg.d_model)


def tokenizer_folder(folder: Path, cache_dir: str | Path) -> Path:
    """A folder with ``tokenizer.json`` for this checkpoint (built once from vocab.json + merges.txt if need be)."""
    if (folder / "tokenizer.json").is_file():
        return folder
    import hashlib
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from attnlab import plain_yaml
    from attnlab.data.tokenizers import MAX_TOKENIZER_BYTES
    h = hashlib.sha256()
    for name in TOKENIZER_FILES[1:]:  # keyed by the files' contents: two folders of one name are two tokenizers
        try:
            h.update(plain_yaml.read_bounded(folder / name, MAX_TOKENIZER_BYTES, "a tokenizer file"))
        except (OSError, plain_yaml.PlainYAMLError) as e:
            raise ConfigError(f"{folder / name}: {e}") from None
    out = Path(cache_dir).expanduser() / "pretrained-tokenizers" / f"{folder.resolve().name}-{h.hexdigest()[:16]}"
    if not (out / "tokenizer.json").is_file():
        tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        out.mkdir(parents=True, exist_ok=True)
        tok.save(str(out / "tokenizer.json"))
    return out
