"""Generation-time machinery the model itself does not carry: the CPU decoding layout of the weights.

Decoding one token is a memory-bound matrix-vector product per weight. On a CPU it streams faster when each
``nn.Linear`` weight is laid out in memory as (in, out) (Hugging Face's Conv1D layout) while keeping its (out, in)
shape for ``F.linear`` (measured in docs/results.md). ``decode_layout(model)`` swaps such copies in for the span
of a ``generate`` call and the model's own tensors back after it: pointer swaps, so the model is never left
changed (``model.train()`` has no storage side effect; optimizers and DDP never see the copies).

The copies cost one pass over the weights (about 0.4 s for GPT-2 small on this project's CPU machine). They are
kept with the model while its weights are unchanged (each parameter's version counter), so a model sampled
again and again (``sample.py num_samples=``, a notebook) makes them once; a model in training mode (the sampling
callback between steps) makes them for the call and lets them go, since the next step changes every weight.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class _DecodeCopies:
    """Per ``nn.Linear`` weight: (its identity when copied: data pointer and version, the (in, out)-laid copy)."""

    def __init__(self):
        self.copies: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}

    def copy_of(self, weight: nn.Parameter) -> torch.Tensor:
        key = id(weight)
        stamp = (weight.data_ptr(), weight._version)
        held = self.copies.get(key)
        if held is None or held[0] != stamp:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable after any mode
                held = (stamp, weight.detach().t().contiguous().t())  # (out, in) shape, (in, out) in memory
            self.copies[key] = held
        return held[1]


def linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Every distinct Linear weight (a tied head shares the embedding's: listed once)."""
    seen, out = set(), []
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module.weight)
    return out


class DecodeLayout:
    """The decoding copies of a model's CPU Linear weights, swapped in and out on demand (``use``): one-token
    steps compute from them; a pass over many tokens (the prompt, a recomputed window) is a matrix-matrix
    product, faster from the model's own layout (measured: GPT-2 small's 256-token prefill took 0.94 s with the
    copies, 0.27 s without). ``close`` puts the model's own tensors back; ``keep``: hold the copies for the next
    call (while the weights stay unchanged)."""

    def __init__(self, model: nn.Module, keep: bool = True):
        self.model, self.keep = model, keep
        self.weights = [w for w in linear_weights(model) if w.device.type == "cpu"]
        self.originals = [w.data for w in self.weights]
        self.copies = getattr(model, "_decode_copies", None) or _DecodeCopies()
        self.swapped = False

    def use(self, on: bool) -> None:
        if on == self.swapped or not self.weights:
            return
        for w, original in zip(self.weights, self.originals):
            w.data = self.copies.copy_of(w) if on else original
        self.swapped = on

    def close(self) -> None:
        self.use(False)
        self.model._decode_copies = self.copies if self.keep else None


@contextlib.contextmanager
def decode_layout(model: nn.Module, keep: bool = True):
    """Within the block, ``model``'s Linear weights (CPU only) compute from (in, out)-laid copies; after it, from
    the model's own tensors again, even when interrupted."""
    layout = DecodeLayout(model, keep)
    try:
        layout.use(True)
        yield model
    finally:
        layout.close()
