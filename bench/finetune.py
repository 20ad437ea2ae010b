"""How much does a pretrained GPT-2 lose when its attention is swapped, and how fast does it recover?

    python bench/finetune.py                          # pretrain a small GPT-2 here, then full / longformer / sparse
    python bench/finetune.py --pretrained hf:gpt2     # or start from any Hugging Face GPT-2 (folder or hub id)
    python bench/finetune.py --types longformer --steps 100

Steps, each a command a user could type (printed as it runs):
1. without ``--pretrained``: ``train.py experiment=gpt2_mini_cpu`` (a GPT-2-shaped model, full attention, context
   128) and ``export.py`` to a Hugging Face folder: the "pretrained" model;
2. ``evaluate.py`` of that model as it is (full attention, its own context) on the validation plays: *before*;
3. per type, ``train.py experiment=finetune_cpu attention=<type>`` from it at 4x the context: its first
   validation (``validate_first``) is the model *right after the swap*, its last one *after the fine-tune*.
The same first 32k tokens of the validation plays are scored every time. Writes a Markdown table and JSON to
``--out`` with the date, the machine and these commands.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
EVAL_TOKENS = 8 * 8 * 512  # finetune_cpu's validation: limit_val_batches x batch_size x context


def run(cmd: list[str], cwd: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, *cmd], cwd=cwd)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}")
    print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", help="a Hugging Face GPT-2 folder or hf:<id>; default: pretrain one here")
    ap.add_argument("--types", nargs="+", default=["full", "longformer", "sparse"])
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per type")
    ap.add_argument("--pretrain-steps", type=int, help="default: experiment=gpt2_mini_cpu's (a smoke test: a few)")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench-finetune"), help="run folders go here")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows, commands, started = [], [], time.perf_counter()

    def step(cmd):
        commands.append("python " + " ".join(cmd))
        run(cmd, ROOT)

    pretrained = args.pretrained
    pretrain_seconds = None
    if pretrained is None:
        pretrained = str(work / "gpt2-mini")
        if not (Path(pretrained) / "config.json").is_file():
            t = time.perf_counter()
            steps = [f"trainer.max_steps={args.pretrain_steps}"] if args.pretrain_steps else []
            step(["train.py", "experiment=gpt2_mini_cpu", *steps, f"hydra.run.dir={work / 'pretrain'}"])
            pretrain_seconds = time.perf_counter() - t
            step(["export.py", f"run={work / 'pretrain'}", f"out={pretrained}", f"hydra.run.dir={work / 'export'}"])
    # before the swap: the model as it is, on the same first tokens of the validation plays
    before_dir = work / "before"
    context = json.loads((Path(pretrained) / "config.json").read_text())["n_positions"] \
        if Path(pretrained).is_dir() else 1024
    eval_batch = 8
    step(["evaluate.py", f"run={pretrained}", "dataset=shakespeare", "split=val", f"batch_size={eval_batch}",
          f"limit_batches={max(1, EVAL_TOKENS // (eval_batch * context))}", f"hydra.run.dir={before_dir}"])
    before = json.loads((before_dir / "metrics.json").read_text())["ppl"]
    for name in args.types:
        folder = work / f"finetune-{name}"
        t = time.perf_counter()
        step(["train.py", "experiment=finetune_cpu", f"init_from={pretrained}", f"attention={name}",
              f"trainer.max_steps={args.steps}", f"hydra.run.dir={folder}"])
        status = json.loads((folder / "status.json").read_text())
        m = status["metrics"]
        rows.append({"attention": name, "before": before, "after_swap": m["start/val_ppl"],
                     "after_finetune": m.get("val/ppl"), "best": m.get("val/ppl_best"), "steps": status["step"],
                     "seconds": round(time.perf_counter() - t, 1), "tokens_per_s": m.get("throughput/tokens_per_s")})
        print(rows[-1], flush=True)

    from attention import machine, write_results  # bench/attention.py
    now = dt.datetime.now()
    result = {"date": now.isoformat(timespec="minutes"), "machine": machine(), "pretrained": pretrained,
              "pretrain_seconds": pretrain_seconds, "pretrained_context": context, "context": 4 * context,
              "eval_tokens": EVAL_TOKENS, "rows": rows, "commands": commands,
              "total_seconds": round(time.perf_counter() - started, 1)}
    lines = [f"# Fine-tuning a pretrained GPT-2 with another attention type — {now:%Y-%m-%d %H:%M}",
             "", f"Machine: {result['machine']}", "",
             f"Pretrained: `{pretrained}` (context {context}, full attention); fine-tuned at context {4 * context} "
             f"for {args.steps} steps. Validation perplexity on the first {EVAL_TOKENS:,} tokens of the validation "
             f"plays.", "",
             "| attention | before the swap | right after | after the fine-tune | best | fine-tune time |",
             "|---|---|---|---|---|---|"]
    fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731  (no validation in a very short smoke run)
    lines += [f"| {r['attention']} | {fmt(r['before'])} | {fmt(r['after_swap'])} | {fmt(r['after_finetune'])} | "
              f"{fmt(r['best'])} | {r['seconds']:.0f} s |" for r in rows]
    lines += ["", "Commands:", "", *[f"    {c}" for c in commands]]
    write_results(args.out, f"finetune-cpu-{now:%Y%m%d-%H%M}", result, lines)


if __name__ == "__main__":
    main()
