"""A sweep's wall time with Hydra's basic launcher (one job after another) against joblib (jobs in parallel).

    python bench/sweep_launchers.py                       # the four-type debug sweep, joblib with 2 jobs at once
    python bench/sweep_launchers.py --n-jobs 4 --repeat 2 -- trainer.max_epochs=4

Each launcher runs the same ``python train.py -m attention=<every registered type> mode=debug`` sweep in a
fresh folder; the table gives the wall time of the whole command (start-up included), every job's own wall
time from its status.json, and the speed-up. Results go to bench/results/sweep_launchers.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def sweep(launcher: list[str], extra: list[str], folder: Path) -> dict:
    from attnlab.attention import ATTENTION_TYPES
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"attention={','.join(ATTENTION_TYPES)}", "mode=debug",
           f"paths.outputs_root={folder}", *launcher, *extra]
    started = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    wall = time.perf_counter() - started
    jobs = [json.loads(p.read_text()) for p in folder.glob("multirun/*/*/status.json")]
    if r.returncode != 0 or len(jobs) != len(ATTENTION_TYPES):
        raise SystemExit(f"the sweep failed ({' '.join(cmd)}):\n{(r.stdout + r.stderr)[-3000:]}")
    return {"wall_s": round(wall, 1), "jobs": len(jobs), "job_wall_s": sorted(j["wall_seconds"] for j in jobs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-jobs", type=int, default=2, help="jobs at once, for the parallel launchers")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each launcher (the table shows each)")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides, after --")
    args = ap.parse_args()
    launchers = {"basic": [], **{f"{name} ({args.n_jobs} at once)": [f"hydra/launcher={name}",
                                                                     f"hydra.launcher.n_jobs={args.n_jobs}"]
                                 for name in ("local", "joblib")}}
    rows = []
    for i in range(args.repeat):
        for name, flags in launchers.items():
            with tempfile.TemporaryDirectory() as tmp:
                print(f"[{i + 1}/{args.repeat}] {name} ...", flush=True)
                rows.append({"launcher": name, "run": i + 1, **sweep(flags, args.overrides, Path(tmp))})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"\nsweep launchers, {dt.date.today()}, {machine}")
    print("| launcher | run | jobs | sweep wall time | each job's own wall time |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['launcher']} | {r['run']} | {r['jobs']} | {r['wall_s']:.1f} s | "
              f"{', '.join(f'{s:.1f}' for s in r['job_wall_s'])} s |")
    basic = [r["wall_s"] for r in rows if r["launcher"] == "basic"]
    par = [r["wall_s"] for r in rows if r["launcher"] != "basic"]
    print(f"\nspeed-up of joblib over basic (mean of runs): {sum(basic) / len(basic) / (sum(par) / len(par)):.2f}x")
    out = ROOT / "bench" / "results" / "sweep_launchers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": str(dt.date.today()), "machine": machine, "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
