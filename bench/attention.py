"""Attention benchmark: time and peak memory against sequence length, for every type x backend on this machine.

    python bench/attention.py                         # CPU defaults: lengths 256..16384, forward and fwd+bwd
    python bench/attention.py --lengths 1024 4096 --types full longformer --modes fwdbwd
    python bench/attention.py --device cuda --dtype bfloat16 --heads 16 --dim 128 --lengths 1024 2048 ... 32768
    python bench/attention.py --set longformer.window=512 --set sparse.summary=16   # change a type's settings

Every registered attention type is measured at its own example settings for each length
(``AttentionType.example(n)``; e.g. sparse with l ~ sqrt(n)), on every backend that computes it here.

Each (type, backend, mode) runs in its own worker process, lengths ascending, until the next length would
exceed --max-seconds or --max-gib (recorded as "stopped", not crashed). CPU peak memory is the growth of
the process's peak resident set (VmHWM, reset before each measurement); CUDA peak memory is
max_memory_allocated. Prints a table, writes JSON and a PNG plot under bench/results/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from attnlab.memory import fmt_bytes  # noqa: E402  (light: no torch import)



def registered_types() -> list[str]:
    from attnlab.attention import ATTENTION_TYPES
    return list(ATTENTION_TYPES)


def parse_sets(items: list[str]) -> dict[str, dict]:
    """['longformer.window=512', ...] -> {'longformer': {'window': 512}} (values parsed as YAML scalars)."""
    import yaml
    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, setting = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected TYPE.SETTING=VALUE, e.g. longformer.window=512")
        out.setdefault(name, {})[setting] = yaml.safe_load(value)
    return out


def attention_config(name: str, backend: str, n: int, args) -> dict:
    """The type's own example settings for length n, with --set overrides."""
    from attnlab.attention import ATTENTION_TYPES
    return {"name": name, **ATTENTION_TYPES[name].example(n), **parse_sets(args.set).get(name, {}),
            "backend": backend, "causal": not args.bidirectional}


def backends_for(name: str, device: str) -> list[str]:
    """Every backend that computes the type and runs on the device; a backend that materialises the scores is
    left out of a sparse type (it costs what full attention costs), unless the type itself materialises them."""
    import torch
    from attnlab.attention import BACKENDS, example_attention
    att = example_attention(name, 1024)
    dev = torch.device(device)
    type_materialises = BACKENDS[att.auto_backend(dev)].materialises_scores
    out = [b for b in att.backends() if BACKENDS[b].unavailable_reason(dev) is None
           and (type_materialises or not BACKENDS[b].materialises_scores)]
    if device == "cuda" and "sdpa" in out:
        out += ["sdpa-flash", "sdpa-cudnn"]  # PyTorch's FA2 and cuDNN kernels, pinned
    return out


# --- the worker: one (type, backend, mode), all lengths --------------------------------------------

def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set (VmHWM) to the current one


def worker(args) -> None:
    import torch
    from attnlab.attention import build_attention, get_backend
    from attnlab.attention.backends.layout import block_layout
    from attnlab.memory import peak_rss_bytes, rss_bytes

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name, backend, mode = args.worker
    sdpa_kernel = None
    if backend.startswith("sdpa-"):
        from torch.nn.attention import SDPBackend
        sdpa_kernel = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    prev_time, prev_n = None, None
    for n in args.lengths:
        B = max(1, args.tokens // n) if args.tokens else args.batch
        att = build_attention(attention_config(name, backend.split("-")[0], n, args))
        att.check(n, args.heads, dev)
        # predict the next run from the last one (x4 for quadratic growth) and stop before a budget is blown
        if prev_time is not None and prev_time * (n / prev_n) ** 2 * (args.repeats + 1) > args.max_seconds * 4:
            print(json.dumps({"length": n, "stopped": "time budget"}), flush=True)
            break
        pattern = att.pattern(n)
        if get_backend(backend.split("-")[0]).uses_blocks:
            block_layout(pattern, n, att.block_size, args.heads)  # built once per shape, outside the timing
        q, k, v = (torch.randn(B, args.heads, n, args.dim, device=dev, dtype=dtype, requires_grad=mode == "fwdbwd")
                   for _ in range(3))
        grad = torch.randn(B, args.heads, n, args.dim, device=dev, dtype=dtype) if mode == "fwdbwd" else None

        def step():
            if sdpa_kernel is not None:
                from torch.nn.attention import sdpa_kernel as ctx
                with ctx(sdpa_kernel):
                    out = att(q, k, v)
            else:
                out = att(q, k, v)
            if mode == "fwdbwd":
                torch.autograd.grad(out, (q, k, v), grad)
            return out

        try:
            with torch.set_grad_enabled(mode == "fwdbwd"):
                step()  # warm-up (compilation, layouts, allocator)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    times = []
                    for _ in range(args.repeats):
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        s.record()
                        step()
                        e.record()
                        torch.cuda.synchronize()
                        times.append(s.elapsed_time(e) / 1e3)
                    peak = torch.cuda.max_memory_allocated() - base
                else:
                    base = rss_bytes()
                    _reset_peak_rss()
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        step()
                        times.append(time.perf_counter() - t0)
                    peak = peak_rss_bytes() - base
        except torch.OutOfMemoryError:
            print(json.dumps({"length": n, "stopped": "out of memory"}), flush=True)
            break
        except RuntimeError as e:
            if "out of memory" in str(e).lower() or "can't allocate" in str(e).lower():
                print(json.dumps({"length": n, "stopped": "out of memory"}), flush=True)
                break
            raise
        med = sorted(times)[len(times) // 2]
        kept = att.attended_keys(n)
        # FLOPs of the allowed scores: QK^T and PV are 2 x 2 x D per pair; backward costs 2.5x forward
        flops = 4 * B * args.heads * args.dim * kept * (3.5 if mode == "fwdbwd" else 1.0)
        print(json.dumps({"length": n, "batch": B, "seconds": med, "peak_bytes": max(0, peak),
                          "attended_pairs": kept, "tflops": flops / med / 1e12}), flush=True)
        prev_time, prev_n = med, n
        q = k = v = grad = None  # free this length's buffers before the next baseline
        if peak > args.max_gib * 2 ** 30 / 4:  # the next length would pass the memory budget (x4 if quadratic)
            print(json.dumps({"length": n * 2, "stopped": "memory budget"}), flush=True)
            break


# --- the driver ------------------------------------------------------------------------------------------

def write_results(out: str | Path, stem: str, result: dict, lines: list[str]) -> Path:
    """``<out>/<stem>.json`` (the numbers) and ``<out>/<stem>.md`` (the table a person reads); prints the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / stem
    path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {path}.md, {path}.json")
    return path


def machine() -> dict:
    import torch
    info = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    types = registered_types()
    p.add_argument("--types", nargs="+", default=types, choices=types)
    p.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=0, help="if set, batch = tokens // length (constant work per token)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=0, help="if set, heads = hidden // dim (e.g. 2048)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--set", action="append", default=[], metavar="TYPE.SETTING=VALUE",
                   help="override a type's example settings, e.g. longformer.window=512 (repeatable)")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop a series when one call would take longer")
    p.add_argument("--max-gib", type=float, default=8.0, help="stop a series before it would need more memory")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hidden:
        args.heads = max(1, args.hidden // args.dim)
    if args.worker:
        return worker(args)

    parse_sets(args.set)  # bad --set values fail here, before any worker starts
    info = machine()
    results = []
    series = [(t, b, m) for t in args.types for b in (args.backends or backends_for(t, args.device))
              for m in args.modes]
    print(f"attention benchmark, {info['date']}, {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
          f"{args.device}, {args.dtype}, heads {args.heads}, head dim {args.dim}", flush=True)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # big buffers go back to the OS when freed
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for i, (t, b, m) in enumerate(series):
        print(f"[{i + 1}/{len(series)}] {t} / {b} / {m} ...", flush=True)
        cmd = [sys.executable, __file__, *passthrough, "--worker", t, b, m]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rows = []
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            rows.append({"length": None, "stopped": f"error: {err[:200]}"})
        for r in rows:
            r.update(type=t, backend=b, mode=m)
            results.append(r)
            if "seconds" in r:
                print(f"    n={r['length']:>6}  {r['seconds'] * 1e3:10.2f} ms  {fmt_bytes(r['peak_bytes']):>10}", flush=True)
            else:
                print(f"    n={r['length']}: stopped ({r['stopped']})", flush=True)
    table = render_table(results, args) + "\n" + render_ratios(results, args)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"attention-{args.device}-{dt.datetime.now().strftime('%Y%m%d-%H%M')}"
    (out / f"{stem}.json").write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=1))
    (out / f"{stem}.md").write_text(f"attention benchmark, {info['date']}, {info.get('gpu', info['cpu'])} "
                                    f"({info['cpus']} cpus), torch {info['torch']}, {args.device}, {args.dtype}, "
                                    f"heads {args.heads}, head dim {args.dim}\n" + table + "\n")
    plot(results, info, args, out / f"{stem}.png")
    print(f"wrote {out / stem}.json, .md and .png")


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def render_table(results, args) -> str:
    types = registered_types()
    lengths = sorted({r["length"] for r in results if "seconds" in r})
    lines = []
    for metric, title in (("seconds", "time (ms, median)"), ("peak_bytes", "peak memory"),
                          ("tflops", "TFLOP/s of the allowed scores")):
        for mode in args.modes:
            lines.append(f"\n{title}, {'forward' if mode == 'fwd' else 'forward + backward'}:\n")
            lines.append("| type / backend | " + " | ".join(str(n) for n in lengths) + " |")
            lines.append("|---|" + "---|" * len(lengths))
            keys = sorted({(r["type"], r["backend"]) for r in results if r["mode"] == mode},
                          key=lambda k: (types.index(k[0]), k[1]))
            for t, b in keys:
                cells = []
                for n in lengths:
                    r = next((r for r in results if (r["type"], r["backend"], r["mode"], r["length"]) == (t, b, mode, n)), None)
                    if r is None or "seconds" not in r:
                        cells.append("—")
                    else:
                        cells.append(f"{r['seconds'] * 1e3:.1f}" if metric == "seconds" else
                                     fmt_bytes(r["peak_bytes"]) if metric == "peak_bytes" else f"{r['tflops']:.3g}")
                lines.append(f"| {t} / {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


YARDSTICK = ("full", "sdpa")  # PyTorch's fused kernel on full causal attention: what every ratio divides by
# issue #11's goals, forward + backward, at the longest length both rows reach: (type, backend, metric, bound)
GOALS = [("longformer", "banded", "time", 0.10),  # time <= 0.10x the fused full causal kernel's
         ("sparse", "banded", "rate", 0.3),  # TFLOP/s on its kept scores >= 0.3x the fused kernel's
         ("flash", "blocked", "rate", 0.5)]


def ratio_rows(results, mode: str) -> dict:
    """{(type, backend): {length: (time ratio, rate ratio)}} against the yardstick at the same length."""
    def at(t, b, n):
        return next((r for r in results if (r["type"], r["backend"], r["mode"], r["length"]) == (t, b, mode, n)
                     and "seconds" in r), None)
    out = {}
    for r in results:
        base = at(*YARDSTICK, r["length"])
        if r["mode"] != mode or "seconds" not in r or base is None:
            continue
        out.setdefault((r["type"], r["backend"]), {})[r["length"]] = (
            r["seconds"] / base["seconds"], r["tflops"] / base["tflops"])
    return out


def render_ratios(results, args) -> str:
    """The side-by-side ratios to the fused kernel, and each goal met or missed (by how much)."""
    if "fwdbwd" not in args.modes:
        return ""
    ratios = ratio_rows(results, "fwdbwd")
    if not ratios:
        return f"\n(no ratios: the yardstick {YARDSTICK[0]} / {YARDSTICK[1]} was not measured)"
    types = registered_types()
    lengths = sorted({n for row in ratios.values() for n in row})
    lines = [f"\nforward + backward against {YARDSTICK[0]} / {YARDSTICK[1]} (fused, full causal) at the same length: "
             "time ratio (lower is faster) / TFLOP/s ratio on each row's own allowed scores:\n",
             "| type / backend | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for t, b in sorted(ratios, key=lambda k: (types.index(k[0]), k[1])):
        row = ratios[(t, b)]
        lines.append(f"| {t} / {b} | " + " | ".join(
            f"{row[n][0]:.3f}x / {row[n][1]:.2f}x" if n in row else "—" for n in lengths) + " |")
    lines.append("\ngoals (issue #11), at the longest length measured for both:")
    for t, b, metric, bound in GOALS:
        row = ratios.get((t, b))
        if not row:
            lines.append(f"- {t} / {b}: not measured")
            continue
        n = max(row)
        value = row[n][0] if metric == "time" else row[n][1]
        met = value <= bound if metric == "time" else value >= bound
        what = "time" if metric == "time" else "TFLOP/s"
        lines.append(f"- {t} / {b} {what} {'<=' if metric == 'time' else '>='} {bound}x at n={n}: {value:.3f}x -> "
                     + ("met" if met else f"MISSED by {abs(value / bound - 1) * 100:.0f}%"))
    return "\n".join(lines)


def plot(results, info, args, path: Path) -> None:
    types = registered_types()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(args.modes), 2, figsize=(12, 4.5 * len(args.modes)), squeeze=False)
    for row, mode in enumerate(args.modes):
        keys = sorted({(r["type"], r["backend"]) for r in results if r["mode"] == mode},
                      key=lambda k: (types.index(k[0]), k[1]))
        for col, (metric, label) in enumerate((("seconds", "time (s)"), ("peak_bytes", "peak memory (bytes)"))):
            ax = axes[row][col]
            for t, b in keys:
                pts = [(r["length"], r[metric]) for r in results
                       if (r["type"], r["backend"], r["mode"]) == (t, b, mode) and "seconds" in r and r[metric] > 0]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{t} / {b}",
                            linestyle="-" if b in ("dense", "blocked", "triton") else "--")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length")
            ax.set_ylabel(label)
            ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}: {label}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"attnlab attention benchmark, {info['date']}, {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
                 f"{args.dtype}, H={args.heads}, D={args.dim}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
