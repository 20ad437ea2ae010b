"""Training throughput: tokens/s, ms/iteration and MFU, per attention type, raw PyTorch loop vs Lightning.

    python bench/throughput.py --preset nanogpt --compile --precision bf16     # nanoGPT shakespeare_char shape
    python bench/throughput.py --preset gpt2 --compile --precision bf16        # GPT-2 124M, batch 12 x 1024
    python bench/throughput.py --preset tiny --steps 20                        # a quick CPU check

The raw loop is the yardstick (random tokens already on the device, as nanoGPT's bench.py does); the
Lightning row runs the same model through ``lightning.Trainer`` with attnlab's LitGPT, so the difference is
Lightning's overhead. MFU counts 6 x parameters + 12 x layers x width x attended keys per token, over the
card's dense bf16 peak (989 TFLOP/s on an H100).
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

PRESETS = {
    # name: (n_layer, n_head, d_model, context, batch, vocab, dropout)
    "tiny": (2, 4, 64, 64, 16, 85, 0.0),
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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
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
    args = ap.parse_args(argv)
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
