"""Looking inside attention: the probabilities each type gives, per-head statistics, and loss by position.

``attention_probabilities`` is the reference: dense, under the type's own pattern, O(T^2) in memory, meant for
a few hundred tokens. Its probabilities times v equal every backend's output (``tests/test_analysis.py``), so
what is drawn is what the trained model computes. ``inspect`` runs a model and returns each layer's
probabilities; ``head_statistics`` turns them into numbers per layer and head; ``loss_by_position`` gives the
mean next-token loss at each position of the context over a split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlab.attention import AttentionType
from attnlab.attention.backends.dense import full_mask
from attnlab.attention.score_mods import ScoreMod


def attention_probabilities(attention: AttentionType, q: torch.Tensor, k: torch.Tensor, layer: int = 0,
                            documents: torch.Tensor | None = None, score_mod: ScoreMod | None = None) -> torch.Tensor:
    """q, k: (B, H, T, D) -> the attention probabilities (B, H, T, T) under ``attention``'s pattern at ``layer``
    (and within ``documents`` (B, T), with ``score_mod`` added to the scores, as the model computes them)."""
    B, H, T, D = q.shape
    allowed = full_mask(attention.pattern(T, layer), B, H, T, documents, q.device)  # (B|1, H|1, T, T)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    if score_mod is not None:
        scores = scores + score_mod.dense(T, T, H, device=q.device, dtype=scores.dtype)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # (B, H, T, T); a row with no key (none here) is 0


@dataclass
class Inspection:
    probabilities: list[torch.Tensor]  # per layer: (B, H, T, T)
    logits: torch.Tensor  # (B, T, V)


@torch.no_grad()
def inspect(model, idx: torch.Tensor, on_layer=None) -> Inspection:
    """Run ``model`` (a ``model.GPT``, in eval mode) on idx (B, T) and return each layer's probabilities, computed
    from the queries and keys of that same forward pass (``GPT.forward(intermediates=...)``); with
    ``on_layer(layer, probs)``, each layer's (B, H, T, T) probabilities go there instead of being kept (one
    layer's worth of memory at a time)."""
    T = idx.shape[1]
    seen: list = []
    logits = model(idx, intermediates=seen)  # (B, T, V)
    probs = []
    for inputs in seen:
        attn = model.blocks[inputs.layer].attn
        attention = attn.attention
        same_as_model = dict(documents=inputs.documents, score_mod=attn.score_mod)
        p = attention_probabilities(attention, inputs.q, attn.heads_of(inputs.k), inputs.layer, **same_as_model)  # (B, H, T, T)
        if inputs.global_qk is not None:  # global rows come from their own projections (Longformer's option)
            rows = attention.is_global(inputs.positions)  # (T,)
            qg, kg = inputs.global_qk
            p = torch.where(rows.view(1, 1, T, 1),
                            attention_probabilities(attention, qg, attn.heads_of(kg), inputs.layer, **same_as_model), p)
        if on_layer is None:
            probs.append(p)
        else:
            on_layer(inputs.layer, p)
    return Inspection(probs, logits)


def global_positions(attention: AttentionType) -> list[int]:
    g = getattr(attention, "global_tokens", 0)
    return list(range(g)) if isinstance(g, int) else list(g)


def head_statistics(probs: torch.Tensor, attention: AttentionType) -> dict[str, list[float]]:
    """probs (B, H, T, T) of one layer -> per head: mean entropy (nats), mean attention distance (tokens, i - j
    weighted by p), and the share of attention on global tokens (for queries that are not global themselves)."""
    B, H, T, _ = probs.shape
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (B, H, T)
    i = torch.arange(T, device=probs.device)
    distance = (probs * (i[:, None] - i[None, :]).abs().to(probs.dtype)).sum(-1)  # (B, H, T)
    stats = {"entropy": entropy.mean((0, 2)).tolist(), "distance": distance.mean((0, 2)).tolist()}
    g = [p for p in global_positions(attention) if p < T]
    others = [p for p in range(T) if p not in g]
    if g and others:
        share = probs[:, :, others][..., g].sum(-1)  # (B, H, T - |g|)
        stats["global_share"] = share.mean((0, 2)).tolist()
    return stats


@torch.no_grad()
def loss_by_position(model, tokens, context: int, max_windows: int = 64, batch_size: int = 8,
                     device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """The mean next-token loss at each position 0..context-1 over up to ``max_windows`` non-overlapping windows
    of a split (a 1-D token array), with a 95% confidence half-width."""
    n = min(max_windows, (len(tokens) - 1) // context)
    if n < 1:
        raise ValueError(f"the split has {len(tokens)} tokens, fewer than one window of {context} + 1")
    losses = []
    for start in range(0, n, batch_size):
        rows = [torch.as_tensor(tokens[w * context: w * context + context + 1].astype("int64"))
                for w in range(start, min(n, start + batch_size))]
        chunk = torch.stack(rows).to(device)  # (b, T + 1)
        logits = model(chunk[:, :-1])  # (b, T, V)
        losses.append(F.cross_entropy(logits.float().transpose(1, 2), chunk[:, 1:], reduction="none").cpu())  # (b, T)
    per = torch.cat(losses).double()  # (n, T)
    mean = per.mean(0)
    half = 1.96 * per.std(0, unbiased=n > 1) / math.sqrt(n) if n > 1 else torch.zeros_like(mean)
    return {"mean": mean.tolist(), "ci95": half.nan_to_num(0.0).tolist(), "windows": n}
