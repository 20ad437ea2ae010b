"""How much does a pretrained GPT-2 lose when its attention is swapped, and how fast does it recover?

    python bench/finetune.py                          # pretrain a small GPT-2 here, then full / longformer / sparse
    python bench/finetune.py --pretrained hf:gpt2     # or start from any Hugging Face GPT-2 (folder or hub id)
    python bench/finetune.py --types longformer --steps 100
    python bench/finetune.py --seeds 1 2 3            # each type fine-tuned from the same model with 3 seeds

Steps, each a command a user could type (printed as it runs):
1. without ``--pretrained``: ``train.py experiment=gpt2_mini_cpu`` (a GPT-2-shaped model, full attention, context
   128) and ``export.py`` to a Hugging Face folder: the "pretrained" model;
2. ``evaluate.py`` of that model as it is (full attention, its own context) on the validation plays: *before*;
3. per type, ``train.py experiment=finetune_cpu attention=<type>`` from it at 4x the context: its first
   validation (``validate_first``) is the model *right after the swap*, its last one *after the fine-tune*.
The same first 32k tokens of the validation plays are scored every time. Each type is fine-tuned once per
``--seeds`` (the data order of the fine-tune; the same seeds for every type), and the table gives each figure
as mean [min–max] over the seeds with the paired differences (``attnlab.compare``). Writes a Markdown table and
JSON to ``--out`` with the date, the machine and these commands.
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
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one fine-tune per type and seed")
    ap.add_argument("--pretrain-steps", type=int, help="default: experiment=gpt2_mini_cpu's (a smoke test: a few)")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench-finetune"), help="run folders go here")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    shown = lambda path: str(path).replace(str(ROOT) + "/", "")  # noqa: E731  (results name no absolute path)
    work.mkdir(parents=True, exist_ok=True)
    rows, commands, started = [], [], time.perf_counter()

    def step(cmd):
        commands.append("python " + " ".join(shown(c) for c in cmd))
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
    for seed in args.seeds:
        for name in args.types:
            folder = work / f"finetune-{name}-seed{seed}"
            t = time.perf_counter()
            step(["train.py", "experiment=finetune_cpu", f"init_from={pretrained}", f"attention={name}",
                  f"seed={seed}", f"trainer.max_steps={args.steps}", f"hydra.run.dir={folder}"])
            status = json.loads((folder / "status.json").read_text())
            m = status["metrics"]
            rows.append({"attention": name, "seed": seed, "before": before, "after_swap": m["start/val_ppl"],
                         "after_finetune": m.get("val/ppl"), "best": m.get("val/ppl_best"), "steps": status["step"],
                         "seconds": round(time.perf_counter() - t, 1),
                         "tokens_per_s": m.get("throughput/tokens_per_s")})
            print(rows[-1], flush=True)

    from attention import machine, write_results  # bench/attention.py
    from attnlab.compare import Spread, difference
    now = dt.datetime.now()
    result = {"date": now.isoformat(timespec="minutes"), "machine": machine(), "pretrained": shown(pretrained),
              "pretrain_seconds": pretrain_seconds, "pretrained_context": context, "context": 4 * context,
              "eval_tokens": EVAL_TOKENS, "rows": rows, "commands": commands,
              "total_seconds": round(time.perf_counter() - started, 1)}
    lines = [f"# Fine-tuning a pretrained GPT-2 with another attention type — {now:%Y-%m-%d %H:%M}",
             "", f"Machine: {result['machine']}", "",
             f"Pretrained: `{shown(pretrained)}` (context {context}, full attention); fine-tuned at context {4 * context} "
             f"for {args.steps} steps, seeds {' '.join(map(str, args.seeds))}. Validation perplexity on the first "
             f"{EVAL_TOKENS:,} tokens of the validation plays; mean [min–max] over the seeds.", "",
             "| attention | before the swap | right after | after the fine-tune | best | fine-tune time |",
             "|---|---|---|---|---|---|"]

    def over_seeds(name: str, key: str, fmt: str = "{:.2f}") -> str:
        values = [r[key] for r in rows if r["attention"] == name and r[key] is not None]
        if values and min(values) == max(values):  # the same for every seed (before the swap, right after it)
            return fmt.format(values[0])
        return Spread(tuple(values)).text(fmt) if values else "–"  # (no validation in a very short smoke run)
    lines += [f"| {name} | {over_seeds(name, 'before')} | {over_seeds(name, 'after_swap')} | "
              f"{over_seeds(name, 'after_finetune')} | {over_seeds(name, 'best')} | {over_seeds(name, 'seconds', '{:.0f} s')} |"
              for name in args.types]
    per_seed = {name: {r["seed"]: r["after_finetune"] for r in rows if r["attention"] == name
                       and r["after_finetune"] is not None} for name in args.types}
    pairs = [(a, b) for i, a in enumerate(args.types) for b in args.types[i + 1:] if per_seed[a] and per_seed[b]]
    if pairs:
        lines += ["", "Differences after the fine-tune (95% t-interval over the paired seeds; called only "
                  "when it excludes 0):", ""]
        lines += ["- " + difference(a, per_seed[a], b, per_seed[b], "val ppl", higher_is_better=False).text()
                  for a, b in pairs]
    lines += ["", "Commands:", "", *[f"    {c}" for c in commands]]
    write_results(args.out, f"finetune-cpu-{now:%Y%m%d-%H%M}", result, lines)


if __name__ == "__main__":
    main()
