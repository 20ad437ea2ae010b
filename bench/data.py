"""Data at scale: build time, peak memory and cache-hit cost of tokenising a large generated corpus.

    python bench/data.py --mb 1024            # >= 1 GB of text in 12 files, char and BPE 4096
    python bench/data.py --mb 100 --tokenizers bpe

The corpus is the Python standard library's sources, repeated with a varying header line, in ``--files``
files. For each tokenizer it measures, each in a fresh process: the first build (``TextDataModule`` through the
token cache; wall time and peak RSS), the limit (the tokenizer's own ``encode_batch`` over the same text on the
same cores, for BPE), and a cache hit (the build again: what a later start pays). Prints a table with the date
and machine and writes it to ``bench/results/data-<machine>-<date>.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(folder: Path, megabytes: int, files: int) -> int:
    """Write about ``megabytes`` MB of Python source text into ``files`` .txt files; returns the bytes written."""
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sources]
    target, written, i = megabytes * 1_000_000, 0, 0
    per_file = target // files
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(folder / f"part{f:02d}.txt", "w", encoding="utf-8") as out:
            size = 0
            while size < per_file:
                chunk = f"# copy {i} of {sources[i % len(sources)].name}\n{texts[i % len(texts)]}\n"
                out.write(chunk)
                size += len(chunk.encode("utf-8"))
                i += 1
            written += size
    return written


BUILD = """
import os, resource, sys, threading, time, logging
logging.basicConfig(level=logging.WARNING)
from attnlab.data import datamodule
from attnlab.data.datamodule import TextDataModule
spent = {"train_tokenizer": 0.0, "encode": 0.0}
peak = {"train_tokenizer": 0, "encode": 0, "now": 0, "anon": 0}
def sample_rss():  # the resident set every 20 ms: each phase's own peak, and the anonymous part (not file pages)
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        with open("/proc/self/statm") as f:
            resident, shared = (int(x) * page for x in f.read().split()[1:3])
        peak["now"], peak["anon"] = max(peak["now"], resident), max(peak["anon"], resident - shared)
        time.sleep(0.02)
threading.Thread(target=sample_rss, daemon=True).start()
def timed(fn, key):
    def wrapper(*a, **k):
        t, peak["now"] = time.perf_counter(), 0
        try:
            return fn(*a, **k)
        finally:
            spent[key] += time.perf_counter() - t
            peak[key] = max(peak[key], peak["now"])
    return wrapper
datamodule.build_tokenizer = timed(datamodule.build_tokenizer, "train_tokenizer")
datamodule.write_tokens = timed(datamodule.write_tokens, "encode")
tok = {"name": sys.argv[3], "vocab_size": 4096, "train_bytes": 100_000_000}
t = time.perf_counter()
dataset = {"name": "bench", "source": "text_files", "path": sys.argv[1]}
if sys.argv[4] == "hub":  # the folder through datasets' own loader: a row per line, joined (wikitext's form)
    dataset = {"name": "bench", "source": "hub", "path": sys.argv[1].rsplit("/", 1)[0], "documents": "joined"}
dm = TextDataModule(dataset, tok, 256, 8, sys.argv[2])
dm.prepare_data()
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, len(dm.tokens["train"]),
      spent["train_tokenizer"], spent["encode"], peak["train_tokenizer"], peak["encode"], peak["anon"])
"""

LIMIT = """
import sys, time, glob
from attnlab.data.tokenizers import load_tokenizer
tok = load_tokenizer(sys.argv[1]).tok
texts = [open(f, encoding="utf-8").read() for f in sorted(glob.glob(sys.argv[2]))]
pieces = [line for t in texts for line in t.splitlines(keepends=True)]
batch = 4096
t = time.perf_counter()
for i in range(0, len(pieces), batch):
    tok.encode_batch(pieces[i:i + batch])
print(time.perf_counter() - t)
"""


def run(code: str, *args: str) -> list[float]:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return [float(x) for x in r.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="corpus size in MB")
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--tokenizers", nargs="+", default=["char", "bpe"])
    ap.add_argument("--skip-limit", action="store_true", help="do not time encode_batch over the corpus (slow)")
    ap.add_argument("--source", choices=["text_files", "hub"], default="text_files",
                    help="hub: read the corpus folder through datasets.load_dataset (one row per line, joined)")
    args = ap.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        size = make_corpus(corpus, args.mb, args.files)
        print(f"corpus: {size / 1e6:.0f} MB in {args.files} files", flush=True)
        rows = []
        for name in args.tokenizers:
            cache = Path(tmp) / f"cache-{name}"
            build_s, peak, tokens, train_s, encode_s, train_peak, encode_peak, anon_peak = run(
                BUILD, str(corpus / "*.txt"), str(cache), name, args.source)
            hit_s, hit_peak, *_ = run(BUILD, str(corpus / "*.txt"), str(cache), name, args.source)
            row = {"tokenizer": name, "source": args.source, "corpus_MB": round(size / 1e6), "build_s": round(build_s, 1),
                   "build_MB_per_s": round(size / 1e6 / build_s, 2), "peak_rss_GB": round(peak / 2 ** 30, 2),
                   "peak_rss_training_GB": round(train_peak / 2 ** 30, 2),
                   "peak_rss_encoding_GB": round(encode_peak / 2 ** 30, 2),
                   "peak_anon_GB": round(anon_peak / 2 ** 30, 2),  # RSS less file pages (a mapped Arrow table)
                   "train_tokens": int(tokens), "tokenizer_training_s": round(train_s, 1),
                   "encoding_s": round(encode_s, 1), "cache_hit_s": round(hit_s, 2)}
            if name == "bpe" and not args.skip_limit and args.source == "text_files":
                [entry] = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
                [limit_s] = run(LIMIT, str(entry), str(corpus / "*.txt"))
                row["encode_batch_s"] = round(limit_s, 1)
                row["vs_encode_batch"] = round(limit_s / encode_s, 2)  # encoding speed against the limit
            rows.append(row)
            print(row, flush=True)
    print(f"\ndata at scale, {dt.datetime.now():%Y-%m-%d %H:%M}, {machine}")
    keys = list(rows[0]) if len(rows) == 1 else sorted({k for r in rows for k in r}, key=lambda k: list(rows[-1]).index(k) if k in rows[-1] else 99)
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "–")) for k in keys) + " |")
    out = ROOT / "bench" / "results" / f"data-cpu-{dt.datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps({"date": f"{dt.datetime.now():%Y-%m-%d %H:%M}", "machine": machine,
                               "command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
