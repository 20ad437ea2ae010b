"""How many CPU threads should a training step use? torch's default (one per core) against 1 thread and the
project's choice (the cores free when the command starts, ``attnlab.threads``), on an idle machine and with
other processes holding cores.

    python bench/threads.py                     # idle, then 1 and 2 busy processes beside it
    python bench/threads.py --busy 0 2 --steps 30

Each configuration times ``--steps`` training steps of the CPU preset's model shape (4 layers, 4 heads, 128 wide,
context 64, batch 32) in a fresh process after 3 warm-up steps; "busy" processes spin on a core each for the
whole measurement. Writes a Markdown table and JSON to ``--out`` with the date, the machine and the load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

STEP = """
import sys, time, torch
from attnlab import threads
setting = sys.argv[1]
n = {"default": None, "auto": "auto"}.get(setting, setting)
if n == "auto":
    n = threads.choose()[0]
if n is not None:
    torch.set_num_threads(int(n))
from attnlab.model import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=65, context=64, n_layer=4, n_head=4, d_model=128), {"name": "full"})
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 65, (32, 64))
def step():
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
t = time.perf_counter()
for _ in range(int(sys.argv[2])):
    step()
print(torch.get_num_threads(), int(sys.argv[2]) / (time.perf_counter() - t))
"""
SPIN = "import time\nt = time.time()\nwhile time.time() - t < 600: pass\n"


def measure(setting: str, steps: int) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", STEP, setting, str(steps)], capture_output=True, text=True, check=True)
    threads, rate = out.stdout.split()
    return int(threads), float(rate)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="spinning processes beside the run")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--settings", nargs="+", default=["default", "1", "2", "auto"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    from attention import machine, write_results  # bench/attention.py
    rows = []
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for setting in args.settings:
                load = os.getloadavg()[0]
                threads, rate = measure(setting, args.steps)
                rows.append({"busy": busy, "setting": setting, "threads": threads, "steps_per_s": round(rate, 3),
                             "load1": round(load, 2)})
                print(rows[-1], flush=True)
        finally:
            for p in spinners:
                p.kill()
    now = dt.datetime.now()
    result = {"machine": machine(), "steps": args.steps, "rows": rows,
              "command": "python bench/threads.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    lines = [f"# Training steps per second by thread count — {now:%Y-%m-%d %H:%M}", "",
             f"Machine: {result['machine']}", "", f"Command: `{result['command']}`", "",
             "| other busy processes | threads setting | threads used | steps/s | load average at start |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['busy']} | {r['setting']} | {r['threads']} | {r['steps_per_s']:.2f} | {r['load1']:.2f} |"
              for r in rows]
    write_results(args.out, f"threads-cpu-{now:%Y%m%d-%H%M}", result, lines)


if __name__ == "__main__":
    main()
