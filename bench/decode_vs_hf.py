"""Decoding with the project's KV cache against Hugging Face's ``generate`` (its own cache), side by side.

    python bench/decode_vs_hf.py                       # GPT-2 small's shape, random weights, 256 + 128 tokens
    python bench/decode_vs_hf.py --layers 4 --width 256 --repeats 1   # a quick look

The same random GPT-2 weights in both (Hugging Face's model, converted to the project's): batch 1, a
``--prompt``-token prompt, ``--new`` greedy tokens, fp32 on the CPU. For each: prefill (the prompt in one
forward pass, filling the cache) and the median time per generated token; the project's types each decode with
their own cache (full is the one Hugging Face computes too), with the weights in ``generation.decode_layout`` as
``generate`` uses them; full also without it. The end-to-end rows time whole ``generate`` calls, prompt
included: Hugging Face's ``generate(do_sample=False)`` against ``GPT.generate(top_k=1)``, the first call on a
fresh model (which makes its decoding copies) and later calls (which reuse them). Needs ``transformers`` (the
dev extra). Writes a Markdown table and JSON to ``--out`` with the date and machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def time_hf(model, prompt, new: int) -> tuple[float, float]:
    """(prefill seconds, median seconds per new token) of Hugging Face's greedy decoding with its cache."""
    import torch
    with torch.no_grad():
        t = time.perf_counter()
        out = model(prompt, use_cache=True)
        prefill = time.perf_counter() - t
        past, nxt, times = out.past_key_values, out.logits[:, -1:].argmax(-1), []
        for _ in range(new):
            t = time.perf_counter()
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - t)
    return prefill, statistics.median(times)


def time_ours(model, prompt, new: int, layout: bool = True) -> tuple[float, float]:
    import contextlib
    import torch
    from attnlab.generation import decode_layout
    with torch.no_grad():
        cache = model.new_cache()
        t = time.perf_counter()
        nxt = model(prompt, cache)[:, -1:].argmax(-1)  # the prompt from the model's own layout, as generate does
        prefill, times = time.perf_counter() - t, []
    with torch.no_grad(), (decode_layout(model) if layout else contextlib.nullcontext()):  # as GPT.generate decodes
        for _ in range(new):
            t = time.perf_counter()
            nxt = model(nxt, cache)[:, -1:].argmax(-1)
            times.append(time.perf_counter() - t)
    return prefill, statistics.median(times)


def time_whole_calls(generate, calls: int) -> list[float]:
    """Seconds of each of ``calls`` whole generate calls, in order (the first may pay one-time costs)."""
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        generate()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> None:
    import torch
    import transformers
    from attnlab import pretrained
    from attnlab.attention import ATTENTION_TYPES
    from attnlab.model import GPT, GPTConfig
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs per model; the best is kept")
    ap.add_argument("--types", nargs="+", default=list(ATTENTION_TYPES), choices=list(ATTENTION_TYPES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    context = 1024
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=context, n_embd=args.width, n_layer=args.layers, n_head=args.heads)).eval()
    state = pretrained.convert(hf.state_dict(), args.layers)
    settings = {"vocab_size": args.vocab, "context": context, "n_layer": args.layers, "n_head": args.heads,
                "d_model": args.width, "d_ff": 4 * args.width, "bias": True, "tie_weights": True,
                "activation": "gelu_tanh", "dropout": 0.0}
    prompt = torch.randint(0, args.vocab, (1, args.prompt))
    rows = []

    def best(fn, model, *more):
        runs = [fn(model, prompt, args.new, *more) for _ in range(args.repeats)]
        return min(r[0] for r in runs), min(r[1] for r in runs)
    hf_prefill, hf_token = best(time_hf, hf)
    rows.append({"model": "Hugging Face generate (full)", "prefill_ms": hf_prefill * 1e3, "ms_per_token": hf_token * 1e3})
    print(rows[-1], flush=True)
    for name in args.types:
        attention = {"name": name, **ATTENTION_TYPES[name].example(args.prompt + args.new)}
        ours = GPT(GPTConfig(**settings), attention).eval()
        ours.load_state_dict(state, strict=False)
        if name == "full":  # the same model: the same greedy tokens
            with torch.no_grad():
                assert torch.allclose(ours(prompt), hf(prompt).logits, atol=1e-4), "the conversion differs"
            prefill, token = best(time_ours, ours, False)  # what the decoding layout gains
            rows.append({"model": "attnlab full, usual weight layout", "prefill_ms": prefill * 1e3,
                         "ms_per_token": token * 1e3, "speed_vs_hf": hf_token / token,
                         "prefill_vs_hf": hf_prefill / prefill})
            print(rows[-1], flush=True)
        prefill, token = best(time_ours, ours)
        rows.append({"model": f"attnlab {name}", "prefill_ms": prefill * 1e3, "ms_per_token": token * 1e3,
                     "speed_vs_hf": hf_token / token, "prefill_vs_hf": hf_prefill / prefill})
        print(rows[-1], flush=True)
    # end to end: whole generate calls, prompt included (greedy: the same tokens from both)
    ours = GPT(GPTConfig(**settings), {"name": "full"}).eval()
    ours.load_state_dict(state, strict=False)
    with torch.no_grad():
        hf_calls = time_whole_calls(lambda: hf.generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new,
                                                        do_sample=False, pad_token_id=0), args.repeats + 1)
    our_calls = time_whole_calls(lambda: ours.generate(prompt, args.new, top_k=1), args.repeats + 1)
    hf_later, our_later = min(hf_calls[1:]), min(our_calls[1:])
    rows.append({"model": "Hugging Face generate, whole call", "call_s": hf_later, "first_call_s": hf_calls[0]})
    rows.append({"model": "attnlab GPT.generate (full), whole call", "call_s": our_later, "first_call_s": our_calls[0],
                 "call_speed_vs_hf": hf_later / our_later, "first_call_speed_vs_hf": hf_calls[0] / our_calls[0]})
    print(rows[-2], rows[-1], flush=True)
    from attention import machine, write_results  # bench/attention.py
    now = dt.datetime.now()
    result = {"date": now.isoformat(timespec="minutes"), "machine": machine(), "args": vars(args), "rows": rows,
              "transformers": transformers.__version__, "torch": torch.__version__}
    lines = [f"# Decoding against Hugging Face's generate — {now:%Y-%m-%d %H:%M}", "", f"Machine: {result['machine']}",
             "", f"{args.layers} layers x {args.width} wide, {args.heads} heads, vocabulary {args.vocab:,}, random "
             f"weights; batch 1, a {args.prompt}-token prompt, {args.new} greedy tokens, fp32; best of "
             f"{args.repeats}. Speed = Hugging Face's ms per token / ours (> 1: faster).", "",
             "| model | prefill (ms) | ms per token | speed vs HF | prefill speed vs HF |", "|---|---|---|---|---|"]
    for r in rows:
        if "prefill_ms" in r:
            lines.append(f"| {r['model']} | {r['prefill_ms']:.1f} | {r['ms_per_token']:.2f} | "
                         f"{r.get('speed_vs_hf', 1.0):.2f}x | {r.get('prefill_vs_hf', 1.0):.2f}x |")
    lines += ["", f"Whole calls ({args.prompt}-token prompt + {args.new} greedy tokens, prompt included): the first "
              f"call on a fresh model, and the best of the {args.repeats} calls after it.", "",
              "| generate | first call (s) | later calls (s) | first call speed vs HF | later calls speed vs HF |",
              "|---|---|---|---|---|"]
    for r in rows:
        if "call_s" in r:
            lines.append(f"| {r['model']} | {r['first_call_s']:.2f} | {r['call_s']:.2f} | "
                         f"{r.get('first_call_speed_vs_hf', 1.0):.2f}x | {r.get('call_speed_vs_hf', 1.0):.2f}x |")
    write_results(args.out, f"decode-vs-hf-cpu-{now:%Y%m%d-%H%M}", result, lines)


if __name__ == "__main__":
    main()
