"""A picture of a pattern: the token-by-token grid, one panel per head (when the pattern depends on it)."""
from __future__ import annotations

from pathlib import Path

from attnlab.attention.patterns import Pattern


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return _save(fig, path)


def save_overview(path: str | Path, n: int = 64, configs: list[dict] | None = None) -> Path:
    """One picture with a panel per attention type (first layer, first head), as in the course's grids."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnlab.attention import build_attention
    configs = configs or [
        {"name": "full"}, {"name": "flash"},
        {"name": "sparse", "pattern_kind": "fixed", "stride": 8, "summary": 2},
        {"name": "sparse", "pattern_kind": "strided", "stride": 8},
        {"name": "longformer", "window": 8, "global_tokens": 2},
        {"name": "longformer", "window": 8, "global_tokens": [0, 32], "causal": False},
    ]
    fig, axes = plt.subplots(1, len(configs), figsize=(3.2 * len(configs), 3.6))
    for ax, cfg in zip(axes, configs):
        att = build_attention(cfg)
        mask = att.pattern(n).dense(n)[0]  # (n, n)
        ax.imshow(mask.numpy(), cmap="Blues", interpolation="nearest", vmin=0, vmax=1)
        extra = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
        ax.set_title(f"{cfg['name']}\n{extra}\n{mask.float().mean():.0%} of pairs", fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("key j", fontsize=7)
        ax.set_ylabel("query i", fontsize=7)
    return _save(fig, path)


if __name__ == "__main__":  # python -m attnlab.attention.pictures [out.png]
    import sys
    print(save_overview(sys.argv[1] if len(sys.argv) > 1 else "attention_patterns.png"))
