"""How much memory a training step needs, from the config alone: the course's "which parameters drive memory?".

Broken down into parameters, gradients, optimizer state, activations (the tensors saved for backward,
outside attention), attention (what the attention type keeps for backward), and logits. Approximate by
design (allocator overheads and temporary buffers are left out); the memory callback prints it next to
the measured peak so the difference is visible.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

BYTES = {"32": 4, "32-true": 4, "16-mixed": 2, "bf16-mixed": 2, "bf16-true": 2, "16-true": 2, "64": 8}


@dataclass
class MemoryEstimate:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    attention: int
    logits: int
    score_matrix: int  # what one layer's B x H x T x T score matrix would take (materialised or not)
    kv_cache: int = 0  # generating: the KV cache of B sequences of the whole context (every layer's key/value heads)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.attention + self.logits

    def rows(self) -> list[tuple[str, int]]:
        return [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer (AdamW)", self.optimizer),
                ("activations", self.activations), ("attention kept for backward", self.attention),
                ("logits + loss", self.logits), ("total", self.total),
                ("(one layer's full score matrix)", self.score_matrix),
                ("(KV cache of the batch at full context, generating)", self.kv_cache)]

    def table(self) -> str:
        w = max(len(n) for n, _ in self.rows())
        return "\n".join(f"  {n:<{w}}  {fmt_bytes(b):>10}" for n, b in self.rows())


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def estimate(n_params: int, batch: int, context: int, d_model: int, n_layer: int, n_head: int, vocab: int,
             dense_scores: bool, precision: str = "32", block: int = 64,
             d_ff: int | None = None, n_kv_head: int | None = None) -> MemoryEstimate:
    """Bytes for one training step from the config. ``dense_scores``: the attention backend materialises the
    n x n probabilities and keeps them for backward (the ``dense`` backend); the others keep O(n) per head
    whatever the pattern, because they recompute the scores in the backward pass."""
    act = BYTES.get(str(precision), 4)  # activation bytes per element under this precision
    d_ff = d_ff or 4 * d_model
    B, T, C, L, H = batch, context, d_model, n_layer, n_head
    # saved per layer, outside attention: ln inputs (2C), qkv (3C), attention output (C), MLP input and
    # hidden before/after GELU (C + 2 d_ff), and the residual adds' inputs (~2C)
    per_layer = B * T * (9 * C + 2 * d_ff) * act
    if dense_scores:
        # dense: the B x H x T x T probabilities (plus the masked scores) are kept for backward
        attn = L * 2 * B * H * T * T * act
    else:
        # flash / block-sparse: q, k, v, output, log-sum-exp per token, O(T); plus one tile row of scratch
        attn = L * B * H * T * 4 + B * H * T * block * 4
    logits = 3 * B * T * vocab * 4  # logits, their fp32 copy for the loss, and its gradient
    return MemoryEstimate(
        parameters=4 * n_params, gradients=4 * n_params, optimizer=8 * n_params,
        activations=L * per_layer, attention=attn, logits=logits, score_matrix=B * H * T * T * act,
        # keys and values of every layer for T positions: n_head / n_kv_head times less with grouped heads
        kv_cache=2 * L * B * (n_kv_head or H) * T * (C // H) * act)


# --- measured memory on the CPU (Linux /proc; 0 elsewhere) ---------------------------------------------------

def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def reset_peak_rss() -> bool:
    """Start this process's peak resident set size (VmHWM) again from now (Linux: ``/proc/self/clear_refs``), so
    the jobs of a sweep run in one process each measure their own peak; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
