"""What a trained model does with its attention: ``python analyze.py run=<run> [prompt=... | split=val]``.

Writes into ``<run folder>/analysis/`` (for a pretrained Hugging Face model: this command's own folder):
* ``attention_layer<k>.png``: the attention probabilities of each head of layer k on one text (the first
  ``tokens`` tokens of the split, or the prompt), the type's allowed pairs drawn faintly underneath;
* ``loss_by_position.png``: the mean next-token loss at each position of the context over the split, with its
  95% confidence band (does the loss keep falling with position, or flatten early?);
* ``extrapolation.png`` (runs with ``model.positions=rope`` or ``alibi``, which have no position table): perplexity when
  reading windows of 1x, 2x and 4x the training context: which attention types extrapolate;
* ``analysis.json``: per layer and head, mean entropy, mean attention distance and the share of attention on
  global tokens; the loss-by-position and extrapolation curves; what was analysed.
"""
from __future__ import annotations

import json
import math
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from attnlab import analysis, run_folder, runs, schema
from attnlab.attention.backends.dense import full_mask
from attnlab.attention.patterns import document_ids
from attnlab.attention.pictures import _pyplot  # matplotlib without a display
from attnlab.schema import ConfigError
from attnlab.cli import run_task
from attnlab.commands import CONFIG_PATH

log = logging.getLogger(__name__)
MAX_TOKEN_LABELS = 48  # more labels than this per axis are unreadable at a panel's size: every k-th is shown


def token_labels(tokens: list[str], every: int | None = None) -> tuple[list[int], list[str]]:
    """Tick positions and readable labels for a map's axes: whitespace made visible (␣, ⏎, ⇥), long pieces cut;
    every k-th token where there are more than MAX_TOKEN_LABELS, each label then prefixed by its position."""
    T = len(tokens)
    every = every or max(1, -(-T // MAX_TOKEN_LABELS))
    shown = lambda s: (s.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅")[:6]  # noqa: E731
    ticks = list(range(0, T, every))
    return ticks, [shown(tokens[i]) if every == 1 else f"{i}:{shown(tokens[i])}" for i in ticks]


def layer_figure(probs: torch.Tensor, allowed: torch.Tensor, layer: int, title: str, tokens: list[str] | None = None):
    """probs (H, T, T) and the pattern's allowed pairs (H, T, T) -> a figure, a panel per head, the axes labelled
    with the tokens (when given) and one colour bar for the probability scale."""
    plt = _pyplot()
    from matplotlib.colors import PowerNorm  # square-root scale: the first rows' near-1 values do not wash out the rest
    H = probs.shape[0]
    panel = 3.2 if tokens is None else max(3.2, min(7.0, 0.14 * len(token_labels(tokens)[0])))  # labels need room
    fig, axes = plt.subplots(1, H, figsize=(panel * H + 0.8, panel + (0.4 if tokens is None else 1.0)), squeeze=False,
                             layout="constrained")
    norm = PowerNorm(0.5, vmin=0, vmax=float(probs.max()))
    image = None
    for h in range(H):
        ax = axes[0][h]
        ax.imshow(allowed[h].numpy(), cmap="Greys", vmin=0, vmax=4, interpolation="nearest")  # the mask, faint
        shown = probs[h].clone()
        shown[~allowed[h]] = float("nan")  # keep the faint mask visible where nothing may be attended
        image = ax.imshow(shown.numpy(), cmap="viridis", norm=norm, interpolation="nearest", alpha=0.9)
        ax.set_title(f"layer {layer}, head {h}", fontsize=8)
        ax.set_xlabel("key j", fontsize=7), ax.set_ylabel("query i", fontsize=7)
        ax.tick_params(labelsize=6)
        if tokens is not None:
            ticks, labels = token_labels(tokens)
            size = 5 if len(ticks) > 24 else 6
            ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
            ax.set_yticks(ticks, labels, fontsize=size)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="attention probability (square-root scale)")
    fig.suptitle(title, fontsize=9)
    return fig


def draw_layer(probs: torch.Tensor, allowed: torch.Tensor, layer: int, title: str, path: Path,
               tokens: list[str] | None = None) -> Path:
    """``layer_figure`` saved as one PNG."""
    fig = layer_figure(probs, allowed, layer, title, tokens)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def draw_loss_by_position(curve: dict, title: str, path: Path) -> Path:
    plt = _pyplot()
    mean, half = torch.tensor(curve["mean"]), torch.tensor(curve["ci95"])
    x = torch.arange(len(mean))
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.plot(x, mean, label="mean next-token loss")
    ax.fill_between(x, mean - half, mean + half, alpha=0.3, label="95% confidence")
    ax.set(xlabel="position in the context window", ylabel="loss (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_extrapolation(curve: dict, context: int, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(curve["lengths"], curve["perplexity"], marker="o")
    ax.axvline(context, color="grey", linestyle="--", label=f"training context ({context})")
    ax.set(xlabel="evaluation length (tokens)", ylabel="perplexity", title=title, xscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analyze(cfg: DictConfig) -> dict:
    schema.check_command("analyze", cfg)
    schema.check(cfg)
    loaded = runs.load_run(cfg.run, cfg.paths.cache_dir, cfg.paths.outputs_root)
    model = loaded.model.model.eval()
    attention, context = model.attention, model.cfg.context
    own_run = loaded.settings.get("dataset") is not None
    out = loaded.folder / run_folder.ANALYSIS.parent if own_run else Path(cfg.paths.output_dir)
    other = cfg.get("dataset")
    dm = None
    if own_run or other:
        from omegaconf import OmegaConf
        dm = loaded.datamodule(cfg.paths.cache_dir, dataset=OmegaConf.to_container(other, resolve=True) if other else None)
    if cfg.get("prompt"):
        from attnlab.sample import encode_prompt  # unseen characters are refused, as sample.py refuses them
        ids = encode_prompt(loaded.tokenizer, str(cfg.prompt))[:context]
        if len(ids) < 2:
            raise ConfigError(f"prompt={cfg.prompt!r} is {len(ids)} token long; the maps need at least 2")
        text = "the prompt"
    elif dm is not None:
        ids = [int(t) for t in dm.tokens[cfg.split][:min(cfg.tokens, context)]]
        text = f"the first {len(ids)} tokens of the {cfg.split} split"
    else:
        raise ConfigError(f"run={cfg.run} has no text of its own: give prompt=... or dataset=...")
    out.mkdir(parents=True, exist_ok=True)
    idx = torch.tensor([ids])  # (1, T)
    pieces = [loaded.tokenizer.decode([i]) for i in ids]  # the axes' labels
    seen = analysis.inspect(model, idx)
    end = model.cfg.document_end  # document masking: the maps' allowed pairs are the pattern's within documents
    documents = None if end is None else document_ids(idx, end)  # (1, T)
    result = {"run": str(loaded.folder), "checkpoint": loaded.checkpoint.name, "attention": attention.describe(),
              "text": text, "tokens": len(ids), "layers": []}
    pictures = []
    for layer, probs in enumerate(seen.probabilities):
        stats = analysis.head_statistics(probs, attention)
        result["layers"].append({"layer": layer, **stats})
        allowed = full_mask(attention.pattern(len(ids), layer), 1, probs.shape[1], len(ids), documents, None
                            )[0].expand(probs.shape[1], -1, -1)  # (H, T, T)
        pictures.append(draw_layer(probs[0], allowed, layer, f"{attention.name} attention on {text}",
                                   out / f"attention_layer{layer}.png", tokens=pieces))
    if dm is not None:
        curve = analysis.loss_by_position(model, dm.tokens[cfg.split], context, cfg.max_windows)
        result["loss_by_position"] = {"split": cfg.split, **curve}
        pictures.append(draw_loss_by_position(curve, f"{attention.name}: loss by position, {cfg.split} split, "
                                              f"{curve['windows']} windows", out / "loss_by_position.png"))
        if model.cfg.positions != "learned":  # no position table: the model can read longer texts than it trained on
            lengths = [context * m for m in (1, 2, 4)]
            ppl = [math.exp(sum(curve["mean"]) / len(curve["mean"]))]  # 1x: the windows just scored
            for length in lengths[1:]:  # the same tokens, read in windows 2x and 4x as long
                windows = curve["windows"] * context // length
                if windows < 1:
                    break
                longer = analysis.loss_by_position(model, dm.tokens[cfg.split], length, windows)
                ppl.append(math.exp(sum(longer["mean"]) / len(longer["mean"])))
            result["extrapolation"] = {"lengths": lengths[:len(ppl)], "perplexity": ppl}
            pictures.append(draw_extrapolation(result["extrapolation"], context, f"{attention.name}: perplexity "
                                               f"against evaluation length ({cfg.split} split)",
                                               out / "extrapolation.png"))
    (out / run_folder.ANALYSIS.name).write_text(json.dumps(result, indent=1))
    for row in result["layers"]:
        log.info("layer %d: entropy %s, mean distance %s%s", row["layer"],
                 " ".join(f"{e:.2f}" for e in row["entropy"]), " ".join(f"{d:.1f}" for d in row["distance"]),
                 (", global share " + " ".join(f"{g:.2f}" for g in row["global_share"])) if "global_share" in row else "")
    log.info("written to %s: analysis.json, %s", out, ", ".join(p.name for p in pictures))
    if loaded.wandb_id and cfg.wandb:
        from attnlab import wandb_run
        try:
            wandb_run.log_analysis(loaded, result, pictures)
        except Exception as e:  # the analysis is written; W&B failing does not undo it
            log.warning("could not log the analysis to W&B run %s (%s: %s); the files are in %s", loaded.wandb_id,
                        type(e).__name__, e, out)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="analyze")
def main(cfg: DictConfig) -> None:
    """``attnlab analyze`` / ``python analyze.py``: one Hydra job."""
    run_task(analyze, cfg)
