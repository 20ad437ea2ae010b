"""Document masking's cost: training tokens/s per attention type and backend, without and with the mask.

    python bench/documents.py                        # every type, every CPU backend, 4 x 128 model, T = 256
    python bench/documents.py --types flash longformer --steps 20

Each training step (forward + backward of the whole model, AdamW's step left out) runs on the same batches
three ways: no document mask (today's model); ``data.document_mask=true`` on windows of the plays (38
documents of ~100k characters: few windows cross an end, and a batch whose windows cross none needs no mask);
and on the same text cut into short documents (an end token every ``--short-docs`` characters on average, so
nearly every window crosses one and every visited tile applies the document check). Writes a Markdown
table, JSON and a plot to ``--out`` with the date and machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

END = 0  # the end-of-document token of the character vocabulary (the char tokenizer's eos id)


def plays_tokens(short_docs: int | None, seed: int = 0):
    """The plays' training split as character ids (end token between plays); with ``short_docs``, more end tokens
    at random places, one per ``short_docs`` characters on average."""
    import numpy as np
    from attnlab.data.corpus import shakespeare_splits
    splits, _ = shakespeare_splits(3, 3, 1234)  # conf/dataset/shakespeare.yaml's split
    plays = splits["train"]
    chars = sorted(set("".join(plays)))
    ids = {c: i + 1 for i, c in enumerate(chars)}
    tokens = np.concatenate([np.asarray([ids[c] for c in play] + [END], dtype=np.int64) for play in plays])
    if short_docs:
        rng = np.random.default_rng(seed)
        tokens[rng.random(len(tokens)) < 1.0 / short_docs] = END
    return tokens, len(chars) + 1


def batches(tokens, T: int, B: int, n: int, seed: int = 0):
    import numpy as np
    import torch
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - T - 1, size=(n, B))
    return [torch.from_numpy(np.stack([tokens[s:s + T] for s in row])) for row in starts]  # n x (B, T)


def crossing(batch_list) -> float:
    """Share of windows that contain an end token before their last position (those the mask changes)."""
    import torch
    windows = torch.cat(batch_list)
    return float((windows[:, :-1] == END).any(1).float().mean())


def time_steps(model, batch_list, warmup: int) -> float:
    """Median seconds of one forward + backward over ``batch_list`` (after ``warmup`` untimed steps)."""
    import torch.nn.functional as F
    times = []
    for i, x in enumerate(batch_list):
        t0 = time.perf_counter()
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main(argv=None) -> None:
    import torch
    from attnlab.attention import ATTENTION_TYPES, BACKENDS, build_attention
    from attnlab.model import GPT, GPTConfig
    import result_files  # bench/result_files.py
    from attention import machine  # bench/attention.py
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=list(ATTENTION_TYPES), choices=list(ATTENTION_TYPES))
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row (after 2 warm-up steps)")
    ap.add_argument("--short-docs", type=int, default=200, help="mean document length of the short-documents text")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    info = machine()
    T, B, warmup = args.context, args.batch, 2
    plays, vocab = plays_tokens(None)
    short, _ = plays_tokens(args.short_docs)
    data = {"plays": batches(plays, T, B, args.steps + warmup), "short": batches(short, T, B, args.steps + warmup)}
    share = {k: crossing(v) for k, v in data.items()}
    print(f"document masking, {info['date']}, {info['cpu']} ({info['cpus']} CPUs), torch "
          f"{info['torch']}; model {args.layers} x {args.width} ({args.heads} heads), batch {B} x {T}; windows "
          f"crossing an end: plays {share['plays']:.1%}, short documents {share['short']:.1%}", flush=True)
    rows = []
    for name in args.types:
        settings = ATTENTION_TYPES[name].example(T)
        for backend in build_attention({"name": name, **settings}).backends():
            if BACKENDS[backend].unavailable_reason(torch.device("cpu")) or backend in ("triton", "flex"):
                continue  # CPU rows only: flex trains on CUDA, triton runs interpreted here
            row = {"type": name, "backend": backend}
            for label, end, text in (("off", None, "plays"), ("plays", END, "plays"), ("short", END, "short")):
                torch.manual_seed(0)
                cfg = GPTConfig(vocab_size=vocab, context=T, n_layer=args.layers, n_head=args.heads, d_model=args.width,
                                document_end=end)
                model = GPT(cfg, build_attention({"name": name, **settings, "backend": backend}))
                row[f"{label}_tokens_per_s"] = B * T / time_steps(model, data[text], warmup)
            row["plays_ratio"] = row["plays_tokens_per_s"] / row["off_tokens_per_s"]
            row["short_ratio"] = row["short_tokens_per_s"] / row["off_tokens_per_s"]
            rows.append(row)
            print(f"  {name:<11} {backend:<8} off {row['off_tokens_per_s']:9,.0f} tokens/s | plays "
                  f"{row['plays_tokens_per_s']:9,.0f} ({row['plays_ratio']:.2f}x) | short documents "
                  f"{row['short_tokens_per_s']:9,.0f} ({row['short_ratio']:.2f}x)", flush=True)

    lines = [f"Document masking, {info['date']}, {info['cpu']} ({info['cpus']} CPUs), torch "
             f"{info['torch']}; model {args.layers} layers x {args.width} wide, {args.heads} heads, batch {B} x {T}, "
             f"forward + backward, median of {args.steps} steps. Windows crossing an end: plays "
             f"{share['plays']:.1%}, short documents (mean {args.short_docs} characters) {share['short']:.1%}.", "",
             "| type | backend | no mask tokens/s | mask, plays | ratio | mask, short documents | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['backend']} | {r['off_tokens_per_s']:,.0f} | {r['plays_tokens_per_s']:,.0f} | "
                     f"{r['plays_ratio']:.2f}x | {r['short_tokens_per_s']:,.0f} | {r['short_ratio']:.2f}x |")
    table = "\n".join(lines)
    print(table)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 4))
        xs = range(len(rows))
        for i, (key, label) in enumerate((("off", "no mask"), ("plays", "mask, plays"), ("short", "mask, short documents"))):
            ax.bar([x + (i - 1) * 0.27 for x in xs], [r[f"{key}_tokens_per_s"] for r in rows], 0.27, label=label)
        ax.set_xticks(list(xs), [f"{r['type']}\n{r['backend']}" for r in rows], fontsize=7)
        ax.set(ylabel="training tokens/s", title=f"document masking's cost ({info['date']}, {info['cpu']})")
        ax.legend(fontsize=7)
        return fig
    result_files.write(args.out, "documents", table, {"machine": info, "args": vars(args), "crossing": share,
                                                      "rows": rows}, draw)


if __name__ == "__main__":
    main()
