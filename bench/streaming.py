"""The StreamingLLM experiment at CPU size: a trained model reads a text several times longer than its attention
window through the KV cache, one token at a time, with three caches, and its perplexity is measured along the way.

    python train.py experiment=gpt2_mini_cpu model.positions=rope      # a model to read with (or any rope/alibi run)
    python bench/streaming.py --run outputs/full-mini-shakespeare-bpe/<date> --window 128 --texts 8

* ``full``: every earlier key stays in the cache (positions run past the training context);
* ``window``: only the last ``window`` keys (a sliding window, causal Longformer with no global token);
* ``sinks``: the first ``sinks`` tokens plus the last ``window`` keys (``attention=sinks``).

Xiao et al. (2023) found that window attention collapses once the first tokens leave the cache, because trained
models park attention on them ("attention sinks"), and that keeping a few of them restores the perplexity.
The texts are the run's validation split cut into ``--texts`` pieces of ``--length`` tokens (default 4x the
window). The same weights serve all three (a run with Longformer's ``global_projections`` is refused: those
weights have no place in the three). Writes a Markdown
table, JSON and a plot (perplexity by position) to ``--out`` with the date, machine and run.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def streamed_nll(model, tokens):
    """tokens (B, L) fed one at a time through a fresh cache -> the loss of each next token, (B, L - 1)."""
    import torch
    import torch.nn.functional as F
    cache, losses = model.new_cache(), []
    with torch.no_grad():
        for t in range(tokens.shape[1] - 1):
            logits = model(tokens[:, t:t + 1], cache)[:, -1]  # (B, V)
            losses.append(F.cross_entropy(logits.float(), tokens[:, t + 1], reduction="none"))  # (B,)
    return torch.stack(losses, 1)  # (B, L - 1)


def sink_share(model, tokens, sinks: int) -> list[dict]:
    """Per layer: the mean attention probability that queries past the first quarter of the context give the
    first ``sinks`` tokens, against what uniform attention over their past would give. An attention sink (Xiao
    et al.) is far above uniform; the collapse of window attention needs one."""
    from attnlab.analysis import inspect
    T = min(tokens.shape[1], model.cfg.context)
    seen = inspect(model, tokens[:, :T])
    start = T // 4
    uniform = sum(min(sinks, i + 1) / (i + 1) for i in range(start, T)) / (T - start)
    return [{"layer": layer, "on_first_tokens": float(p[:, :, start:, :sinks].sum(-1).mean()), "uniform": uniform}
            for layer, p in enumerate(seen.probabilities)]  # p: (B, H, T, T)


def main(argv=None) -> None:
    import torch
    from attnlab.attention import build_attention
    from attnlab.model import GPT
    from attnlab.runs import load_run
    import result_files  # bench/result_files.py
    from attention import machine  # bench/attention.py
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder of a model with rope or alibi positions")
    ap.add_argument("--window", type=int, default=None, help="keys each query keeps (default: the model's context)")
    ap.add_argument("--sinks", type=int, default=4, help="first tokens the sinks cache keeps (the paper's 4)")
    ap.add_argument("--length", type=int, default=None, help="tokens per text (default: 4x the window)")
    ap.add_argument("--texts", type=int, default=8, help="texts read side by side (a batch)")
    ap.add_argument("--cache-dir", default="~/.cache/attnlab")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    info = machine()
    loaded = load_run(args.run, args.cache_dir)
    cfg = loaded.model.model.cfg
    if cfg.positions == "learned":
        raise SystemExit(f"--run {args.run}: its positions are learned (a table of {cfg.context}); the experiment "
                         f"reads past the context: train with model.positions=rope or alibi")
    if loaded.model.model.attention.separate_global_projections:
        raise SystemExit(f"--run {args.run}: its attention has global projections of its own (Longformer's "
                         f"global_projections), weights the full, window and sinks caches have no place for")
    window = args.window or cfg.context
    length = args.length or 4 * window
    tokens = loaded.datamodule(args.cache_dir).tokens["val"]
    if len(tokens) < args.texts * length:
        raise SystemExit(f"the validation split has {len(tokens):,} tokens, fewer than {args.texts} x {length}")
    texts = torch.tensor(tokens[:args.texts * length].astype("int64")).view(args.texts, length)  # (B, L)
    state = loaded.model.model.state_dict()
    caches = {"full": {"name": "full"},
              "window": {"name": "longformer", "window": window, "global_tokens": 0},
              "sinks": {"name": "sinks", "sinks": args.sinks, "window": window}}
    print(f"streaming, {info['date']}, {info['cpu']} ({info['cpus']} CPUs), torch {info['torch']}; "
          f"run {loaded.folder.name} ({cfg.positions} positions, context {cfg.context}), {args.texts} texts of "
          f"{length} tokens, window {window}, sinks {args.sinks}", flush=True)
    trained = loaded.model.model.eval()
    sinks_now = sink_share(trained, texts, args.sinks)
    print("  attention on the first {} tokens (queries past {}): ".format(args.sinks, cfg.context // 4)
          + ", ".join(f"layer {s['layer']} {s['on_first_tokens']:.3f}" for s in sinks_now)
          + f" (uniform: {sinks_now[0]['uniform']:.3f})", flush=True)
    chunk = window
    rows = []
    for label, attention in caches.items():
        model = GPT(cfg, build_attention(attention)).eval()
        model.load_state_dict(state)
        nll = streamed_nll(model, texts)  # (B, L - 1)
        per_chunk = [math.exp(float(nll[:, i:i + chunk].mean())) for i in range(0, nll.shape[1], chunk)]
        rows.append({"cache": label, "attention": attention, "ppl": math.exp(float(nll.mean())),
                     "ppl_by_chunk": per_chunk})
        print(f"  {label:<7} perplexity {rows[-1]['ppl']:8.2f}; by {chunk}-token block: "
              + " ".join(f"{p:.2f}" for p in per_chunk), flush=True)
    heads = " | ".join(f"tokens {i * chunk + 1}-{min((i + 1) * chunk, length - 1)}" for i in range(len(rows[0]["ppl_by_chunk"])))
    lines = [f"Streaming (StreamingLLM's experiment), {info['date']}, {info['cpu']} ({info['cpus']} "
             f"CPUs), torch {info['torch']}; run `{loaded.folder.name}` ({cfg.n_layer} layers x {cfg.d_model}, "
             f"{cfg.positions} positions, trained at context {cfg.context}); {args.texts} validation texts of "
             f"{length} tokens read one token at a time; window {window}, sinks {args.sinks}. Perplexity of the next "
             f"token:", "", f"| cache | all tokens | {heads} |", "|---|---|" + "---|" * len(rows[0]["ppl_by_chunk"])]
    for r in rows:
        lines.append(f"| {r['cache']} | {r['ppl']:.2f} | " + " | ".join(f"{p:.2f}" for p in r["ppl_by_chunk"]) + " |")
    lines += ["", f"Attention the trained model gives its first {args.sinks} tokens (queries past position "
              f"{cfg.context // 4}, full attention, the first {cfg.context} tokens of each text): "
              + ", ".join(f"layer {s['layer']} {s['on_first_tokens']:.3f}" for s in sinks_now)
              + f"; uniform attention would give {sinks_now[0]['uniform']:.3f}."]
    table = "\n".join(lines)
    print(table)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in rows:
            xs = [min((i + 0.5) * chunk, length) for i in range(len(r["ppl_by_chunk"]))]
            ax.plot(xs, r["ppl_by_chunk"], "o-", label=f"{r['cache']} ({r['ppl']:.1f})")
        ax.axvline(cfg.context, color="grey", linestyle=":", label=f"training context {cfg.context}")
        ax.set(xlabel="position in the text (tokens)", ylabel=f"perplexity per {chunk}-token block", yscale="log",
               title=f"streaming past the window ({info['date']})")
        ax.legend(fontsize=7)
        return fig
    result_files.write(args.out, "streaming", table, {"machine": info, "run": loaded.folder.name,
                                                      "args": {k: v for k, v in vars(args).items() if k != "run"},
                                                      "window": window, "length": length, "rows": rows,
                                                      "sink_share": sinks_now}, draw)


if __name__ == "__main__":
    main()
