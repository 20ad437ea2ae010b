"""Data-parallel training that is exact, checked with two CPU processes (gloo): each rank trains on its own
slice of every global batch (so 2 x batch 4 follows the 1 x batch 8 trajectory), validation and test count
every target once across the ranks (a 2-process evaluation equals the 1-process one), and a resumed 2-process
run continues at the exact data position on every rank."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.checkpoints import safe_load
from attnlab.data.datamodule import IGNORE, EvalWindows, RankShard, ResumableSampler
from conftest import ROOT

RUN = ["mode=debug", "trainer.max_epochs=-1", "scheduler.total_steps=8", "trainer.limit_val_batches=0",
       "test_after_fit=false", "trainer.log_every_n_steps=1", "callbacks.model_summary=null",
       "callbacks.attention_picture=null", "trainer.enable_model_summary=false",
       "++callbacks.last_checkpoint._target_=attnlab.callbacks.LastCheckpoint",
       "++callbacks.last_checkpoint.dirpath=${paths.checkpoint_dir}",
       "++callbacks.last_checkpoint.every_n_train_steps=100"]
ONE = ["trainer=cpu", "data.batch_size=8"]
TWO = ["trainer=ddp_cpu", "data.batch_size=4"]  # the same global batch of 8 windows


# -- the sharding itself, without processes -------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_consecutive_slices_of_the_same_global_batches(world):
    n, batch = 50, 4
    single = list(ResumableSampler(n, seed=3, batch_size=batch * world))
    ranks = [list(ResumableSampler(n, seed=3, batch_size=batch, rank=r, world=world)) for r in range(world)]
    assert all(len(r) == len(ranks[0]) == n // (batch * world) * batch for r in ranks)
    for g in range(n // (batch * world)):  # global batch g = the ranks' g-th batches, in rank order
        assert sum((r[g * batch:(g + 1) * batch] for r in ranks), []) == single[g * batch * world:(g + 1) * batch * world]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_evaluation_target_is_counted_once_across_ranks(world):
    tokens = torch.arange(1000).numpy()  # 999 targets; 999 / 64 windows do not divide among the ranks
    windows = EvalWindows(tokens, context=64)
    shards = [RankShard(windows, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # the same number of batches on every rank
    counted = sorted(int(t) for s in shards for i in range(len(s)) for t in s[i][1] if t != IGNORE)
    single = sorted(int(t) for i in range(len(windows)) for t in windows[i][1] if t != IGNORE)
    assert counted == single == list(range(1, 1000))


# -- two processes ------------------------------------------------------------------------------------------

def run(script, *args, cwd, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def newest_run(root: Path) -> Path:
    return max((p.parent for p in root.glob("**/run.json")), key=lambda p: p.stat().st_mtime)


def weights(ckpt: Path) -> dict:
    state = safe_load(ckpt)
    return {"step": state["global_step"], **state["state_dict"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    out = {}
    for name, extra in [("one", [*ONE, "trainer.max_steps=8"]), ("two", [*TWO, "trainer.max_steps=8"]),
                        ("two_first_half", [*TWO, "trainer.max_steps=4"])]:
        run("train.py", *RUN, *extra, f"paths.outputs_root={root / name}", cwd=root)
        out[name] = newest_run(root / name)
    first_half = out["two_first_half"] / "checkpoints" / "last.ckpt"
    assert weights(first_half)["step"] == 4
    run("train.py", *RUN, *TWO, "trainer.max_steps=8", f"ckpt_path={first_half}",
        f"paths.outputs_root={root / 'resumed'}", cwd=root)
    out["resumed_ckpt"] = first_half  # a resumed run goes on writing into its checkpoint's folder
    for name, trainer in [("eval_one", "trainer=cpu"), ("eval_two", "trainer=ddp_cpu")]:
        r = run("evaluate.py", f"run={out['one']}", "split=val", trainer, f"paths.outputs_root={root / name}",
                cwd=root)
        [metrics] = (root / name).glob("evaluate/*/metrics.json")
        out[name] = json.loads(metrics.read_text())
        out[name + "_log"] = r.stdout + r.stderr
    return out


@pytest.mark.slow
def test_two_processes_with_half_the_batch_follow_the_one_process_trajectory(runs):
    one = weights(runs["one"] / "checkpoints" / "last.ckpt")
    two = weights(runs["two"] / "checkpoints" / "last.ckpt")
    assert one["step"] == two["step"] == 8
    for k in one:  # same global batches, averaged gradients: the same weights up to float summation order
        torch.testing.assert_close(two[k], one[k], atol=1e-4, rtol=1e-3, msg=k)


@pytest.mark.slow
def test_a_two_process_evaluation_equals_the_one_process_one(runs):
    one, two = runs["eval_one"], runs["eval_two"]
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert two["ppl"] == pytest.approx(one["ppl"], rel=1e-5)
    assert "sync_dist" not in runs["eval_two_log"]  # no per-rank metric left unreduced


@pytest.mark.slow
def test_a_resumed_two_process_run_continues_at_the_exact_data_position(runs):
    straight = weights(runs["two"] / "checkpoints" / "last.ckpt")
    resumed = weights(runs["resumed_ckpt"])
    assert resumed["step"] == straight["step"] == 8
    for k in straight:  # any rank reading other windows after the resume would change the weights
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_a_ddp_sweep_starts_each_jobs_processes_as_that_job(tmp_path):
    # each child process must run its own job as a single run (not the whole sweep again), and the second
    # job must launch fresh children rather than wait for the first job's, which are gone
    r = run("train.py", "-m", *RUN, *TWO, "trainer.max_steps=3", "attention=full,longformer", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert "2 finished, 0 failed" in out, out[-3000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/status.json"))
    assert [json.loads(p.read_text())["step"] for p in jobs] == [3, 3]
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*"))) == 3  # two job folders and multirun.yaml
