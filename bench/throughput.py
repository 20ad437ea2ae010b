"""Training throughput: tokens/s, ms/iteration and MFU, per attention type, raw PyTorch loop vs Lightning;
and side by side with nanoGPT itself on its CPU recipe.

    python bench/throughput.py --preset nanogpt --compile --precision bf16     # nanoGPT shakespeare_char shape
    python bench/throughput.py --preset gpt2 --compile --precision bf16        # GPT-2 124M, batch 12 x 1024
    python bench/throughput.py --preset tiny --steps 20                        # a quick CPU check
    python bench/throughput.py --vs-nanogpt ~/nanoGPT --repeats 2              # both codebases, same recipe

``--vs-nanogpt DIR`` (a checkout of github.com/karpathy/nanoGPT) trains nanoGPT's CPU recipe for shakespeare_char
(its README's command) and ``python train.py experiment=nanogpt_cpu`` on the same input.txt, one after the
other, ``--repeats`` times alternating. Without ``DIR/data/shakespeare_char/input.txt`` it writes one of the same
size (1,115,394 characters) from the embedded plays and runs nanoGPT's prepare.py. It reports training
tokens/s (evaluation time left out on both sides), wall time and validation loss at step 2000.

The raw loop is the yardstick (random tokens already on the device, as nanoGPT's bench.py does); the
Lightning row runs the same model through ``lightning.Trainer`` with attnlab's LitGPT, so the difference is
Lightning's overhead. MFU counts 6 x parameters + 12 x layers x width x attended keys per token, over the
card's dense bf16 peak (989 TFLOP/s on an H100).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

PRESETS = {
    # name: (n_layer, n_head, d_model, context, batch, vocab, dropout)
    "tiny": (2, 4, 64, 64, 16, 85, 0.0),
    "nanogpt_cpu": (4, 4, 128, 64, 12, 65, 0.0),  # nanoGPT's CPU recipe (experiment=nanogpt_cpu)
    "nanogpt": (6, 6, 384, 256, 64, 65, 0.2),  # nanoGPT config/train_shakespeare_char.py
    "gpt2": (12, 12, 768, 1024, 12, 50304, 0.0),  # nanoGPT bench.py: GPT-2 124M, vocab padded to 50304
}
def registered_types() -> list[str]:
    from attnlab.attention import ATTENTION_TYPES
    return list(ATTENTION_TYPES)


def attention_config(name: str, T: int) -> dict:
    """Each registered type at its own example settings for the context T (e.g. sparse l ~ sqrt(T))."""
    from attnlab.attention import ATTENTION_TYPES
    return {"name": name, **ATTENTION_TYPES[name].example(T)}


def bench_raw(args, preset, attn_cfg, device):
    import torch
    import torch.nn.functional as F
    from attnlab.model import GPT, GPTConfig
    L_, H, C, T, B, V, p = preset
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, context=T, n_layer=L_, n_head=H, d_model=C, dropout=p), dict(attn_cfg)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as conf/optimizer/adamw.yaml
    fwd = torch.compile(model) if args.compile else model
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        with amp:
            loss = F.cross_entropy(fwd(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt_ = (time.perf_counter() - t0) / args.steps
    return dt_, B * T / dt_, model.flops_per_token(T)


def bench_lightning(args, preset, attn_cfg, device):
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from attnlab.attention import build_attention
    from attnlab.lit import LitGPT
    from attnlab.model import GPTConfig
    L_, H, C, T, B, V, p = preset
    torch.manual_seed(0)
    n_batches = args.steps + args.warmup
    data = torch.randint(0, V, (n_batches * B, T + 1))
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=B, pin_memory=device.type == "cuda")
    lit = LitGPT(GPTConfig(n_layer=L_, n_head=H, d_model=C, context=T, dropout=p, vocab_size=V),
                 build_attention(attn_cfg), compile=args.compile)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.dt = (time.perf_counter() - self.t0) / args.steps

    timer = Timer()
    trainer = L.Trainer(accelerator=device.type if device.type != "cuda" else "gpu", devices=1, max_steps=n_batches,
                        precision="bf16-mixed" if args.precision == "bf16" else "32", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, callbacks=[timer], limit_val_batches=0)
    lit.example_input_array = None
    trainer.fit(lit, train_dataloaders=loader)
    return timer.dt, B * T / timer.dt, lit.model.flops_per_token(T)


# --- side by side with nanoGPT -----------------------------------------------------------------------------

_L, _H, _C, _T, _B, _, _P = PRESETS["nanogpt_cpu"]
NANOGPT_CPU_RECIPE = [  # nanoGPT's README, "I only have a macbook": its shakespeare_char config, sized for a CPU
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
    f"--block_size={_T}", f"--batch_size={_B}", f"--n_layer={_L}", f"--n_head={_H}", f"--n_embd={_C}",
    "--max_iters=2000", "--lr_decay_iters=2000", f"--dropout={_P}"]
TINY_SHAKESPEARE_CHARS = 1_115_394  # the size of nanoGPT's input.txt
RECIPE_TOKENS_PER_STEP = _B * _T


def nanogpt_text(nanogpt: Path) -> Path:
    """nanoGPT's shakespeare_char input.txt, prepared; written from the embedded plays if the checkout has none."""
    data = nanogpt / "data" / "shakespeare_char"
    text_path = data / "input.txt"
    if not text_path.exists():
        from attnlab.data.corpus import shakespeare_splits
        splits, _ = shakespeare_splits(3, 3, 1234)  # conf/dataset/shakespeare.yaml's split
        text = "\n".join(splits["train"] + splits["val"] + splits["test"])
        cut = text.rfind("\n", 0, TINY_SHAKESPEARE_CHARS) + 1  # a whole line, about tiny Shakespeare's size
        tmp = text_path.with_suffix(".txt.partial")
        tmp.write_text(text[:cut], encoding="utf-8")
        tmp.replace(text_path)  # never a half-written input.txt
        print(f"wrote {text_path} ({cut:,} characters of the embedded plays; tiny Shakespeare is not reachable here)")
    if not (data / "train.bin").exists() or (data / "train.bin").stat().st_mtime < text_path.stat().st_mtime:
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return text_path


def run_streaming(cmd: list[str], cwd: Path, show: str) -> tuple[str, float]:
    """Run a command, echo the lines matching ``show`` (progress), return all output and the wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(show, line):
            print("    " + line.rstrip()[:150], flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n" + "".join(lines[-20:]))
    return "".join(lines), time.perf_counter() - t0


def run_nanogpt(nanogpt: Path, out_dir: Path) -> dict:
    log, wall = run_streaming([sys.executable, "train.py", *NANOGPT_CPU_RECIPE, f"--out_dir={out_dir}"], nanogpt,
                              show=r"^step \d+:")
    times = [float(ms) / 1e3 for it, ms in re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", log, re.M)
             if int(it) % 250]  # iterations that ran an evaluation (every 250) are left out, and iteration 0
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", log, re.M)
    step, _, val = evals[-1]
    return {"tokens_per_s": RECIPE_TOKENS_PER_STEP * len(times) / sum(times), "wall_s": wall,
            "val_loss": float(val), "val_step": int(step)}


def run_attnlab(text: Path, out_dir: Path, extra: list[str]) -> dict:
    import csv
    _, wall = run_streaming([sys.executable, str(ROOT / "train.py"), "experiment=nanogpt_cpu", "dataset=text_files",
                             f"dataset.path={text}", "dataset.val_fraction=0.1", "dataset.test_fraction=0.001",
                             "logger=csv", f"hydra.run.dir={out_dir}", *extra], ROOT,
                            show=r"estimated time left|val/loss")
    rows = list(csv.DictReader(open(out_dir / "csv" / "metrics.csv")))
    tps = [float(r["throughput/tokens_per_s"]) for r in rows if r.get("throughput/tokens_per_s")]
    vals = [(int(r["step"]) + 1, float(r["val/loss"])) for r in rows if r.get("val/loss")]  # logged at steps done - 1
    step, val = vals[-1]
    # windows of equal token counts: the run's rate is their harmonic mean (total tokens over total time)
    return {"tokens_per_s": len(tps) / sum(1 / t for t in tps), "wall_s": wall, "val_loss": val, "val_step": step}


def vs_nanogpt(args) -> None:
    import tempfile
    nanogpt = Path(args.vs_nanogpt).expanduser().resolve()
    if not (nanogpt / "train.py").exists() or not (nanogpt / "config" / "train_shakespeare_char.py").exists():
        raise SystemExit(f"--vs-nanogpt {nanogpt}: not a nanoGPT checkout (no train.py and "
                         f"config/train_shakespeare_char.py); git clone https://github.com/karpathy/nanoGPT")
    text = nanogpt_text(nanogpt)
    from attention import machine as machine_info  # bench/attention.py: date, CPU model, cores, torch
    info = machine_info()
    stamp, machine = info["date"], f"{info['cpu']}, {info['cpus']} cpus, torch {info['torch']}"
    print(f"attnlab vs nanoGPT, CPU recipe for shakespeare_char, {stamp}, {machine}\ntext: {text}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for who in ("nanoGPT", "attnlab"):
                print(f"[{len(runs) + 1}/{2 * args.repeats}] {who} (2,000 steps) ...", flush=True)
                out = Path(tmp) / f"{who}-{i}"
                r = run_nanogpt(nanogpt, out) if who == "nanoGPT" else run_attnlab(text, out, args.attnlab_args)
                runs.append({"who": who, "repeat": i, **r})
                print(f"    {r['tokens_per_s']:,.0f} training tokens/s, {r['wall_s']:.0f} s wall, "
                      f"val loss {r['val_loss']:.4f} at step {r['val_step']}", flush=True)
    lines = ["| run | training tokens/s | wall time (s) | val loss at 2000 |", "|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['who']} #{r['repeat'] + 1} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} | {r['val_loss']:.4f} |")
    med = lambda who, k: statistics.median(r[k] for r in runs if r["who"] == who)  # noqa: E731
    ratio_tps = med("attnlab", "tokens_per_s") / med("nanoGPT", "tokens_per_s")
    ratio_wall = med("attnlab", "wall_s") / med("nanoGPT", "wall_s")
    lines.append(f"| attnlab / nanoGPT (medians) | **{ratio_tps:.3f}x** | {ratio_wall:.3f}x | "
                 f"{med('attnlab', 'val_loss') - med('nanoGPT', 'val_loss'):+.4f} |")
    goal = "met" if ratio_tps >= 1.1 else f"MISSED by {(1 - ratio_tps / 1.1) * 100:.0f}%"
    lines.append(f"\ngoal (issue #11): attnlab >= 1.1x nanoGPT's training tokens/s -> {goal}; "
                 f"val loss at 2000 steps: attnlab {med('attnlab', 'val_loss'):.4f}, nanoGPT {med('nanoGPT', 'val_loss'):.4f}")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput-vs-nanogpt-cpu-{dt.datetime.now().strftime('%Y%m%d-%H%M')}"
    path.with_suffix(".json").write_text(json.dumps({"date": stamp, "machine": machine, "nanogpt_recipe": NANOGPT_CPU_RECIPE,
                                                     "attnlab_args": args.attnlab_args, "runs": runs}, indent=1))
    path.with_suffix(".md").write_text(f"attnlab vs nanoGPT, {stamp}, {machine}\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {path}.json and .md")


def main(argv=None):
    import torch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nanogpt", choices=sorted(PRESETS))
    ap.add_argument("--attention", nargs="+", default=registered_types(), choices=registered_types())
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "32", choices=["32", "bf16"])
    ap.add_argument("--no-lightning", action="store_true", help="only the raw loop")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--vs-nanogpt", metavar="DIR", help="a nanoGPT checkout: run both codebases on its CPU recipe")
    ap.add_argument("--repeats", type=int, default=1, help="with --vs-nanogpt: alternating runs of each")
    ap.add_argument("--attnlab-args", nargs="*", default=[], help="with --vs-nanogpt: extra overrides for train.py")
    args = ap.parse_args(argv)
    if args.vs_nanogpt:
        return vs_nanogpt(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    from attnlab.callbacks import peak_flops
    peak = peak_flops(card)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"throughput, {stamp}, {card}, torch {torch.__version__}, preset {args.preset}, precision {args.precision}, "
          f"compile {args.compile}")
    rows = []
    for name in args.attention:
        for runner in ("raw", "lightning"):
            if runner == "lightning" and args.no_lightning:
                continue
            fn = bench_raw if runner == "raw" else bench_lightning
            try:
                sec, tps, fpt = fn(args, PRESETS[args.preset], attention_config(name, PRESETS[args.preset][3]), device)
            except Exception as e:  # one failing type should not hide the others
                print(f"  {name}/{runner}: failed: {type(e).__name__}: {e}")
                continue
            mfu = tps * fpt / peak if peak else None
            rows.append({"attention": name, "runner": runner, "ms_per_iter": sec * 1e3, "tokens_per_s": tps, "mfu": mfu})
            print(f"  {name:<11} {runner:<9} {sec * 1e3:9.2f} ms/iter {tps:12,.0f} tok/s" +
                  (f"  MFU {mfu:.1%}" if mfu else ""), flush=True)
    lines = ["| attention | runner | ms/iter | tokens/s | MFU |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attention']} | {r['runner']} | {r['ms_per_iter']:.2f} | {r['tokens_per_s']:,.0f} | "
                     + (f"{r['mfu']:.1%}" if r["mfu"] else "—") + " |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{args.preset}-{device.type}-{dt.datetime.now().strftime('%Y%m%d-%H%M')}"
    (out / f"{stem}.json").write_text(json.dumps({"date": stamp, "card": card, "torch": torch.__version__,
                                                  "args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out / stem}.json")


if __name__ == "__main__":
    main()
