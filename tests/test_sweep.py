"""One bad job does not end a sweep: it is recorded (status.json), the others run, the sweep reports every job
and exits non-zero. A loss that becomes NaN stops its run at once, naming the step."""
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, default_sigint
from test_config import run_train

JOB = ["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "test_after_fit=false"]


def statuses(tmp_path):
    [sweep] = list((tmp_path / "outputs" / "multirun").iterdir())
    jobs = sorted(sweep.glob("*/status.json"), key=lambda p: int(p.parent.name.split("-")[0]))
    return [json.loads(p.read_text()) for p in jobs]


def study_trials(db: Path) -> list[tuple[str, float | None, dict]]:
    import optuna
    [summary] = optuna.get_all_study_summaries(storage=f"sqlite:///{db}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    return [(t.state.name, t.value, t.params) for t in study.trials]


@pytest.mark.slow
def test_a_bad_job_in_the_middle_of_a_sweep_is_recorded_and_the_others_finish(tmp_path):
    r = run_train("-m", *JOB, "attention=longformer", "attention.window=8,0,16", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert [s["status"] for s in statuses(tmp_path)] == ["finished", "refused", "finished"]  # bad input: nothing ran
    assert "attention.window=0 must be in [1, 64]" in statuses(tmp_path)[1]["reason"]
    assert "2 finished, 1 failed" in out


@pytest.mark.slow
def test_an_out_of_memory_job_is_recorded_and_the_next_job_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = run_train("-m", *JOB, "+callbacks.oom._target_=sweep_helpers.RaiseOOM", "+callbacks.oom.step=2,1000",
                  cwd=tmp_path)
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


# -- search and launchers through Hydra's plugins ------------------------------------------------------------

@pytest.mark.slow
def test_a_four_trial_optuna_search_completes_and_saves_the_best_parameters(tmp_path):
    r = run_train("hparams_search=lr_dropout", "hydra.sweeper.n_trials=4", *JOB, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    trials = study_trials(tmp_path / "outputs" / "optuna" / "full-lr_dropout.db")
    assert [state for state, _, _ in trials] == ["COMPLETE"] * 4
    assert len({t[2]["optimizer.lr"] for t in trials}) == 4  # the sampler proposed four different points
    [results] = (tmp_path / "outputs" / "multirun").glob("*/optimization_results.yaml")
    from omegaconf import OmegaConf
    best = OmegaConf.load(results)
    _, best_value, best_params = min(trials, key=lambda t: t[1])
    assert best.best_value == pytest.approx(best_value) and dict(best.best_params) == best_params
    assert "best val/ppl_best" in out and "4 finished, 0 failed" in out
    assert "\x1b[" not in out  # no raw colour codes from Optuna's own log handler


@pytest.mark.slow
def test_a_failing_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = run_train("hparams_search=lr_dropout", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=fails",
                  "+callbacks.fail._target_=sweep_helpers.FailInJob", "+callbacks.fail.job=0", *JOB, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]  # the sweep reports its failed job
    assert [t[0] for t in study_trials(tmp_path / "outputs" / "optuna" / "fails.db")] == ["FAIL", "COMPLETE"]
    assert "1 finished, 1 failed" in out and "job 0 fails on purpose" in out


@pytest.mark.slow
def test_the_local_launcher_runs_two_jobs_at_once_each_on_its_own_core(tmp_path):
    r = run_train("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *JOB, "attention=full,flash",
                  "trainer.limit_train_batches=500",  # long enough to overlap the other job's start-up
                  cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    a, b = statuses(tmp_path)
    assert a["status"] == b["status"] == "finished"
    assert a["started"] < b["ended"] and b["started"] < a["ended"]  # their lifetimes overlap: in parallel
    if len(os.sched_getaffinity(0)) >= 2:
        cores = sorted(line.split("cores ")[1] for line in out.splitlines() if "at once: cores" in line)
        assert len(cores) == 2 and cores[0] != cores[1], out[-3000:]


def test_the_slurm_launcher_takes_its_gpus_tasks_and_nodes_from_the_trainer():
    from conftest import compose
    from omegaconf import OmegaConf
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.devices=4",
                   "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    resolved = {k: OmegaConf.select(cfg, f"hydra.launcher.{k}") for k in
                ("partition", "gpus_per_node", "tasks_per_node", "nodes", "timeout_min", "cpus_per_task")}
    assert resolved == {"partition": "gpu", "gpus_per_node": 4, "tasks_per_node": 4, "nodes": 2,
                        "timeout_min": 240, "cpus_per_task": 8}
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2


def test_every_search_config_composes_with_the_optuna_sweeper():
    from conftest import compose
    from omegaconf import OmegaConf
    for name in sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml")):
        cfg = compose([f"hparams_search={name}"])
        assert cfg.hydra.sweeper._target_ == "hydra_plugins.attnlab_plugins.OptunaSearch", name
        assert str(cfg.hydra.sweeper.storage).startswith("sqlite:///"), name
        for key in cfg.hydra.sweeper.params:  # every searched key exists in the run's config
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", (name, key)


def test_a_job_knows_its_place_in_the_sweep(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from attnlab.sweep import job_position
    from conftest import compose
    cfg = compose(["mode=debug"], tmp_path / "run")
    assert job_position() is None  # a single run
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    task = ["attention=full,flash,sparse", "seed=1,2", "mode=debug"]  # what Hydra saves from the command line
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}}}), sweep_dir / "multirun.yaml")
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.job.num = 4
        cfg.hydra.sweep.dir = str(sweep_dir)
    HydraConfig().set_config(cfg)
    assert job_position() == (5, 6)


def test_the_progress_bar_estimates_the_whole_runs_time_left(monkeypatch):
    import types

    from attnlab import callbacks
    bar = callbacks.RunProgressBar()
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    bar.start = (100.0, 20)  # this session began at step 20 (a resumed run)
    trainer = types.SimpleNamespace(global_step=30, estimated_stepping_batches=120)
    clock[0] = 105.0  # 10 steps in 5 s
    assert bar.remaining_seconds(trainer) == pytest.approx(90 * 0.5)
    assert callbacks.duration(3725) == "1:02:05" and callbacks.duration(65) == "1:05"


@pytest.mark.slow
def test_a_continued_study_draws_new_points_and_an_all_failed_study_ends_with_the_summary(tmp_path):
    for _ in range(2):  # the same command twice: the study continues
        r = run_train("hparams_search=lr_dropout", "hydra.sweeper.n_trials=2", *JOB, cwd=tmp_path)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    trials = study_trials(tmp_path / "outputs" / "optuna" / "full-lr_dropout.db")
    assert len(trials) == 4 and len({t[2]["optimizer.lr"] for t in trials}) == 4  # not the first two again
    r = run_train("hparams_search=lr_dropout", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=all_fail",
                  *JOB, "model.n_layer=0", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert "no trial of this search finished" in out and "0 finished, 2 failed" in out
    assert "model.n_layer=0" in out


@pytest.mark.subprocess
def test_zero_trials_is_refused_in_one_line(tmp_path):
    r = run_train("hparams_search=lr_dropout", "hydra.sweeper.n_trials=0", *JOB, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "hydra.sweeper.n_trials=0 must be an integer >= 1" in out and "Traceback" not in out


def _sweep_process(tmp_path, *args, log_name="sweep.log"):
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local",
                             "hydra.launcher.n_jobs=2", *args], cwd=tmp_path, env=env, start_new_session=True,
                            preexec_fn=default_sigint,
                            stdout=open(tmp_path / log_name, "w"), stderr=subprocess.STDOUT)


def _wait_for_steps(tmp_path, n_checkpoints: int, timeout: float = 120):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(tmp_path.glob("outputs/multirun/*/*/csv/metrics.csv"))) < n_checkpoints:
        time.sleep(0.5)
    time.sleep(3)  # a few steps in


@pytest.mark.slow
def test_a_job_killed_by_the_system_is_recorded_and_the_sweep_goes_on(tmp_path):
    p = _sweep_process(tmp_path, *JOB, "trainer.limit_train_batches=6", "+callbacks.kill._target_=sweep_helpers.KillSelfInJob",
                       "+callbacks.kill.job=0", "seed=1,2,3")
    assert p.wait(timeout=300) == 1, (tmp_path / "sweep.log").read_text()[-3000:]
    out = (tmp_path / "sweep.log").read_text()
    killed, *others = statuses(tmp_path)
    assert killed["status"] == "failed" and "killed by SIGKILL" in killed["reason"], killed
    assert [s["status"] for s in others] == ["finished", "finished"]  # the running one and the later one
    assert "2 finished, 1 failed" in out and "Traceback" not in out


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_sweep_each_job_saving_and_recording_interrupted(tmp_path):
    import signal
    p = _sweep_process(tmp_path, *JOB, "trainer.limit_train_batches=100000", "seed=1,2,3")
    _wait_for_steps(tmp_path, 2)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole process group
    assert p.wait(timeout=120) == 130
    out = (tmp_path / "sweep.log").read_text()
    assert "1 never started" in out and "Traceback" not in out, out[-3000:]
    done = statuses(tmp_path)
    assert [s["status"] for s in done] == ["interrupted", "interrupted"] and all(s["step"] > 0 for s in done)
    assert len(list(tmp_path.glob("outputs/multirun/*/*/checkpoints/last.ckpt"))) == 2


@pytest.mark.slow
def test_killing_the_launcher_stops_its_jobs(tmp_path):
    import signal
    import subprocess
    p = _sweep_process(tmp_path, *JOB, "trainer.limit_train_batches=100000", "seed=1,2")
    _wait_for_steps(tmp_path, 2)
    os.kill(p.pid, signal.SIGKILL)  # the launcher only
    p.wait(timeout=30)
    import time
    deadline = time.time() + 60
    while time.time() < deadline and len([s for s in statuses(tmp_path) if s]) < 2:
        time.sleep(0.5)
    assert [s["status"] for s in statuses(tmp_path)] == ["interrupted", "interrupted"]
    deadline = time.time() + 60
    while (left := subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()) \
            and time.time() < deadline:
        time.sleep(0.5)
    assert not left, left  # no orphaned worker goes on training


def _wait_for_job_processes(p, n: int, timeout: float = 60) -> None:
    """Until the launcher's session holds n job processes besides itself (they are starting: importing)."""
    import subprocess
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
        if len(pids) >= n + 1:
            return
        time.sleep(0.1)
    raise AssertionError("the jobs never started")


@pytest.mark.slow
def test_ctrl_c_while_jobs_are_still_starting_is_one_line_each_and_recorded(tmp_path):
    import signal
    import time
    p = _sweep_process(tmp_path, *JOB, "seed=1,2")
    _wait_for_job_processes(p, 2)
    time.sleep(1.5)  # inside the jobs' imports (train.py's take several seconds)
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(timeout=120) == 130
    out = (tmp_path / "sweep.log").read_text()
    assert "Traceback" not in out, out[-3000:]
    assert [s["status"] for s in statuses(tmp_path)] == ["interrupted", "interrupted"]


@pytest.mark.slow
def test_killing_the_launcher_while_its_jobs_start_stops_them_at_once(tmp_path):
    """The parent-death signal is set before a job imports the project (10-20 s), not after."""
    import signal
    import subprocess
    import time
    p = _sweep_process(tmp_path, *JOB, "trainer.limit_train_batches=100000", "seed=1,2")
    _wait_for_job_processes(p, 2)
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    killed = time.time()
    while (left := subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()) \
            and time.time() - killed < 30:
        time.sleep(0.2)
    assert not left and time.time() - killed < 8, (left, time.time() - killed)
