"""A picture of a pattern: the token-by-token grid, one panel per head (when the pattern depends on it)."""
from __future__ import annotations

from pathlib import Path

from attnlab.attention.patterns import Pattern


def save_pattern_picture(pattern: Pattern, n: int, path: str | Path, n_heads: int = 1, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = n_heads if pattern.per_head else 1
    mask = pattern.dense(n, n, heads)  # (heads, n, n)
    fig, axes = plt.subplots(1, heads, figsize=(4 * heads, 4.3), squeeze=False)
    for h in range(heads):
        ax = axes[0][h]
        ax.imshow(mask[h].numpy(), cmap="Blues", interpolation="nearest", vmin=0, vmax=1)
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
        kept = mask[h].float().mean().item()
        ax.set_title((f"head {h}: " if heads > 1 else "") + f"{kept:.0%} of pairs", fontsize=9)
    fig.suptitle(f"{title}\n{pattern.name}" if title else pattern.name, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
