"""The longest context each attention type can train on: small model, batch 1, doubling the length until
out of memory (recorded, not crashed). Plots memory and step time against context length.

    python bench/long_context.py                          # GPU: bf16, 1k .. 256k
    python bench/long_context.py --max-context 8192       # a CPU run (fp32)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

def registered_types() -> list[str]:
    from attnlab.attention import ATTENTION_TYPES
    return list(ATTENTION_TYPES)


def attention_config(name: str, n: int) -> dict:
    """Each registered type at its own example settings for length n (Longformer: w 256 + 16 global from 2k on)."""
    from attnlab.attention import ATTENTION_TYPES
    return {"name": name, **ATTENTION_TYPES[name].example(n)}


def one_step(name, n, device, precision):
    import torch
    import torch.nn.functional as F
    from attnlab.model import GPT, GPTConfig
    cfg = attention_config(name, n)
    model = GPT(GPTConfig(vocab_size=2048, context=n, n_layer=6, n_head=6, d_model=384), cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 2048, (1, n), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(2):  # the first step builds layouts / compiles; the second is timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    from attnlab.memory import peak_rss_bytes
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    return times[-1], peak


def main(argv=None):
    import subprocess
    import torch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attention", nargs="+", default=registered_types(), choices=registered_types())
    ap.add_argument("--start", type=int, default=1024)
    ap.add_argument("--max-context", type=int, default=262144 if torch.cuda.is_available() else 8192)
    ap.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "32")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:  # one (type, length) per process, so an OOM or a fragmented allocator cannot leak over
        name, n = args.worker[0], int(args.worker[1])
        try:
            sec, peak = one_step(name, n, device, args.precision)
            print(json.dumps({"seconds": sec, "peak_bytes": peak}))
        except torch.OutOfMemoryError:
            print(json.dumps({"stopped": "out of memory"}))
        return
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"long context, {stamp}, {card}, torch {torch.__version__}, small model (6x384), batch 1, {args.precision}")
    results = []
    for name in args.attention:
        n = args.start
        while n <= args.max_context:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, str(n), "--precision", args.precision],
                                  capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("{")), None)
            r = json.loads(line) if line else {"stopped": "crashed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:150]}
            r.update(attention=name, context=n)
            results.append(r)
            if "seconds" in r:
                print(f"  {name:<11} {n:>7}  {r['seconds'] * 1e3:10.1f} ms  {r['peak_bytes'] / 2**30:8.2f} GiB", flush=True)
            else:
                print(f"  {name:<11} {n:>7}  stopped: {r['stopped']}", flush=True)
                break
            n *= 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"long_context-{device.type}-{dt.datetime.now().strftime('%Y%m%d-%H%M')}"
    (out / f"{stem}.json").write_text(json.dumps({"date": stamp, "card": card, "results": results}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in args.attention:
        pts = [(r["context"], r["seconds"], r["peak_bytes"] / 2**30) for r in results if r["attention"] == name and "seconds" in r]
        if pts:
            c, s, m = zip(*pts)
            axes[0].plot(c, s, marker="o", label=name)
            axes[1].plot(c, m, marker="o", label=name)
    for ax, lab in zip(axes, ("step time (s)", "peak memory (GiB)")):
        ax.set_xscale("log", base=2), ax.set_yscale("log"), ax.set_xlabel("context length"), ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3), ax.legend()
    fig.suptitle(f"longest trainable context, {stamp}, {card}, small model, batch 1, {args.precision}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
