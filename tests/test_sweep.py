"""One bad job does not end a sweep: it is recorded (status.json), the others run, the sweep reports every job
and exits non-zero. A loss that becomes NaN stops its run at once, naming the step."""
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT
from test_config import run_train

JOB = ["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "test_after_fit=false"]


def statuses(tmp_path):
    [sweep] = list((tmp_path / "outputs" / "multirun").iterdir())
    jobs = sorted(sweep.glob("*/status.json"), key=lambda p: int(p.parent.name.split("-")[0]))
    return [json.loads(p.read_text()) for p in jobs]


@pytest.mark.slow
def test_a_bad_job_in_the_middle_of_a_sweep_is_recorded_and_the_others_finish(tmp_path):
    r = run_train("-m", *JOB, "attention=longformer", "attention.window=8,0,16", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert [s["status"] for s in statuses(tmp_path)] == ["finished", "failed", "finished"]
    assert "attention.window=0 must be in [1, 64]" in statuses(tmp_path)[1]["reason"]
    assert "2 finished, 1 failed" in out


@pytest.mark.slow
def test_an_out_of_memory_job_is_recorded_and_the_next_job_runs(tmp_path):
    env_path = str(ROOT / "tests")
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        r = run_train("-m", *JOB, "+callbacks.oom._target_=sweep_helpers.RaiseOOM", "+callbacks.oom.step=2,1000",
                      cwd=tmp_path)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    first, second = statuses(tmp_path)
    assert first["status"] == "failed" and first["step"] == 2 and "OutOfMemoryError" in first["reason"]
    assert second["status"] == "finished" and second["step"] == 3


def test_a_loss_that_becomes_nan_stops_the_run_naming_the_step(make_cfg):
    from attnlab.callbacks import TrainingDiverged
    from attnlab.train import train
    cfg = make_cfg(["mode=debug", "optimizer.lr=1e9", "trainer.gradient_clip_val=null"])
    with pytest.raises(TrainingDiverged, match=r"training loss became (nan|inf) at step \d+; the last finite loss "
                                               r"was [\d.]+ at step \d+; learning rate"):
        train(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status["status"] == "failed" and "TrainingDiverged" in status["reason"] and status["step"] > 0


def test_a_finished_run_records_its_status(make_cfg):
    from attnlab.train import train
    cfg = make_cfg([*JOB])
    train(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status == {**status, "status": "finished", "reason": "", "step": 3}
