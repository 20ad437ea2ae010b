"""Pictures of patterns: the token-by-token grid, from the same predicates every backend computes."""
from __future__ import annotations

import textwrap
from pathlib import Path

from attnlab.attention.patterns import Pattern


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_pattern_picture(pattern: Pattern, n: int, path: str | Path, n_heads: int = 1, title: str = "") -> Path:
    """One panel per head (when the pattern depends on it)."""
    plt = _pyplot()
    heads = n_heads if pattern.per_head else 1
    mask = pattern.dense(n, n, heads)  # (heads, n, n)
    fig, axes = plt.subplots(1, heads, figsize=(4 * heads, 4.3), squeeze=False)
    for h in range(heads):
        ax = axes[0][h]
        ax.imshow(mask[h].numpy(), cmap="Blues", interpolation="nearest", vmin=0, vmax=1)
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
        ax.set_title((f"head {h}: " if heads > 1 else "") + f"{mask[h].float().mean():.0%} of pairs", fontsize=9)
    fig.suptitle(f"{title}\n{pattern.name}" if title else pattern.name, fontsize=9)
    return _save(fig, path)


def save_overview(path: str | Path, n: int = 64) -> Path:
    """Every registered type at its example settings for length n (first layer, first head): causal on the
    top row, bidirectional below."""
    from attnlab.attention.registry import ATTENTION_TYPES, example_attention
    plt = _pyplot()
    names = list(ATTENTION_TYPES)
    # constrained layout keeps each row's three-line titles clear of the row above's axis labels
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 7.6), squeeze=False, layout="constrained")
    for col, name in enumerate(names):
        for row, causal in enumerate((True, False)):
            att = example_attention(name, n, causal=causal)
            mask = att.pattern(n).dense(n)[0]  # (n, n)
            ax = axes[row][col]
            ax.imshow(mask.numpy(), cmap="Blues", interpolation="nearest", vmin=0, vmax=1)
            extra = textwrap.fill(", ".join(f"{k}={v}" for k, v in ATTENTION_TYPES[name].example(n).items()
                                            if k != "block_size"), 38)
            ax.set_title(f"{name}{'' if causal else ' (bidirectional)'}\n{extra}\n"
                         f"{mask.float().mean():.0%} of pairs", fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel("key j", fontsize=7)
            ax.set_ylabel("query i", fontsize=7)
    return _save(fig, path)


if __name__ == "__main__":  # python -m attnlab.attention.pictures [out.png]
    import sys
    print(save_overview(sys.argv[1] if len(sys.argv) > 1 else "attention_patterns.png"))
