"""sample.py, evaluate.py and report.py held to train.py's standard: every bad input is one line naming it and
what is allowed, exit code 2, no traceback, and nothing is silently accepted.

The bad values are written here by hand, not taken from the rules that reject them, so a rule that is too
loose fails its case.
"""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab import checkpoints
from attnlab.cli import run_plain, run_task
from attnlab.evaluate import evaluate
from attnlab.report import report
from attnlab.sample import sample
from conftest import ROOT


def command_cfg(name: str, overrides: list[str], out: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.paths.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    HydraConfig().set_config(cfg)
    return cfg


def expect_one_line(caplog, task, cfg, message: str) -> None:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="attnlab"), pytest.raises(SystemExit) as exit_info:
        run_task(task, cfg)
    assert exit_info.value.code == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage(), [r.getMessage() for r in errors]
    assert message in errors[0].getMessage(), errors[0].getMessage()


@pytest.fixture(scope="module")
def bad_runs(trained_run, tmp_path_factory):
    """A run whose checkpoint holds NaN weights (written before runs refused to save them)."""
    root = tmp_path_factory.mktemp("bad")
    diverged = root / "diverged"
    shutil.copytree(trained_run, diverged)
    last = diverged / "checkpoints" / "last.ckpt"
    state = checkpoints.safe_load(last)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = torch.full_like(state["state_dict"][first], float("nan"))
    state["attnlab"]["format"] = 1  # as written by attnlab before checkpoints carried a digest
    torch.save(state, last)
    prompt_dir = root / "prompts"
    prompt_dir.mkdir()
    (prompt_dir / "binary.txt").write_bytes(b"\xff\xfe\x00binary")
    return {"diverged": diverged, "prompts": prompt_dir}


SAMPLE_CASES = [  # (overrides, message); {run}, {diverged}, {prompts} are filled in
    (["run={run}", "use_cache=maybe"], "use_cache='maybe' must be true or false"),
    (["run={run}", "escapes=2"], "escapes=2 must be true or false"),
    (["run={run}", "max_new_tokens=0"], "max_new_tokens=0 must be an integer in [1, 1000000]"),
    (["run={run}", "num_samples=-3"], "num_samples=-3 must be an integer >= 1"),
    (["run={run}", "temperature=0"], "temperature=0 must be a number >= 0.001"),
    (["run={run}", "temperature=1e-300"], "temperature=1e-300 must be a number >= 0.001"),
    (["run={run}", "temperature=hot"], "temperature='hot' must be a number >= 0.001"),
    (["run={run}", "top_k=0"], "top_k=0 must be an integer >= 1, or null"),
    (["run={run}", "seed=-1"], "seed=-1 must be an integer in [0, 4294967295]"),
    (["run={run}", "device=tpu"], "device='tpu' must be one of ['auto', 'cpu', 'cuda']"),
    (["run={run}", "prompt_file={prompts}/missing.txt"], "missing.txt: no such file"),
    (["run={run}", "prompt_file={prompts}"], "prompt_file={prompts}: a folder"),
    (["run={run}", "prompt_file={prompts}/binary.txt"], "binary.txt: not UTF-8 text"),
    (["run={run}", "prompt='ROMEO: ✓'"], "has characters the run's tokenizer does not know: ['✓']"),
    (["run=nowhere/at/all"], "run=nowhere/at/all: no such file or folder"),
    (["run={diverged}"], "holds NaN or inf weights"),
    (["run=last", "paths.outputs_root={prompts}"], "run=last: no run folder with a checkpoint under"),
]

EVALUATE_CASES = [
    ([], "run is required and not set"),
    (["run={run}", "split=train"], "split='train' must be one of ['test', 'val']"),
    (["run={run}", "batch_size=0"], "batch_size=0 must be an integer >= 1"),
    (["run={run}", "batch_size=-2"], "batch_size=-2 must be an integer >= 1"),
    (["run={run}", "limit_batches=0"], "limit_batches=0 must be a fraction in (0, 1] or a whole number"),
    (["run={run}", "limit_batches=1.5"], "limit_batches=1.5 must be a fraction in (0, 1] or a whole number"),
    (["run={run}", "trainer.precision=17"], "trainer.precision=17 must be one of"),
    (["run={run}", "dataset=text_files"], "dataset.path is required and not set"),
    (["run={run}", "dataset=text_files", "dataset.path={prompts}/none.txt"], "matches no .txt file"),
    (["run={diverged}"], "holds NaN or inf weights"),
]


def _fill(overrides, trained_run, bad_runs):
    return [o.format(run=trained_run, **bad_runs) for o in overrides]


@pytest.mark.parametrize("overrides,message", SAMPLE_CASES, ids=[" ".join(o) for o, _ in SAMPLE_CASES])
def test_sample_bad_input_is_one_line_and_exit_2(caplog, tmp_path, trained_run, bad_runs, overrides, message):
    cfg = command_cfg("sample", _fill(overrides, trained_run, bad_runs), tmp_path / "out")
    expect_one_line(caplog, sample, cfg, message.format(run=trained_run, **bad_runs))
    assert not (tmp_path / "out" / "samples.json").exists()


@pytest.mark.parametrize("overrides,message", EVALUATE_CASES, ids=[" ".join(o) or "no run" for o, _ in EVALUATE_CASES])
def test_evaluate_bad_input_is_one_line_and_exit_2(caplog, tmp_path, trained_run, bad_runs, overrides, message):
    cfg = command_cfg("evaluate", _fill(overrides, trained_run, bad_runs), tmp_path / "out")
    expect_one_line(caplog, evaluate, cfg, message)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_report_bad_input_is_one_line_and_exit_2(tmp_path, capsys, trained_run):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [([str(tmp_path / "nowhere")], None, "nowhere: no such folder"),
             ([str(tmp_path / "empty")], None, "no run folders"),
             ([str(trained_run)], str(tmp_path / "a_file"), "--out " + str(tmp_path / "a_file") + ": a file")]
    for paths, out, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_plain("report.py", lambda: report(paths, out))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_report_writes_into_a_new_out_folder_and_labels_single_runs_by_folder(tmp_path, trained_run):
    runs, files = report([str(trained_run)], str(tmp_path / "new" / "dir"))
    assert files["markdown"].parent == tmp_path / "new" / "dir"
    assert runs[0].label == trained_run.name and not runs[0].label.startswith("2026:")


def test_report_refuses_a_yaml_alias_bomb_in_a_run_config_at_once(tmp_path, trained_run):
    import time
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 items if expanded
    with open(run / ".hydra" / "config.yaml", "a") as f:
        f.write("\n".join(lines) + "\n")
    started = time.time()
    [row], _ = report([str(run)], str(tmp_path / "out"))
    assert "config.yaml unreadable" in row.status and time.time() - started < 30


@pytest.mark.parametrize("damaged", ["status.json", "csv/metrics.csv", ".hydra/config.yaml", "samples.jsonl"])
def test_report_on_a_damaged_file_keeps_the_row_and_says_which_file(tmp_path, trained_run, damaged):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / damaged).parent.mkdir(parents=True, exist_ok=True)
    (run / damaged).write_text({"status.json": "{not json", "csv/metrics.csv": "step,val/ppl\n3,abc\n",
                                ".hydra/config.yaml": "model: [unclosed", "samples.jsonl": "[1, 2]\n"}[damaged])
    [row], _ = report([str(run)], str(tmp_path / "out"))
    assert f"{Path(damaged).name} unreadable" in row.status


@pytest.mark.subprocess
def test_a_bad_value_in_a_sample_sweep_is_recorded_and_the_sweep_goes_on(tmp_path, trained_run):
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "-m", f"run={trained_run}", "max_new_tokens=5",
                        "temperature=0.5,-1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "1 finished, 1 failed" in out and "Traceback" not in out, out[-3000:]
    assert "temperature=-1 must be a number >= 0.001" in out


@pytest.mark.subprocess
def test_zero_parallel_jobs_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "mode=debug", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=0", "seed=1,2"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "hydra.launcher.n_jobs=0 must be an integer >= 1" in out and "Traceback" not in out, \
        out[-3000:]


def test_report_on_non_finite_steps_and_odd_folder_names_keeps_going(tmp_path, trained_run):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").write_text("{}\n")
    odd = sweep_dir / "²-a"
    shutil.copytree(trained_run, odd)
    metrics = odd / "csv" / "metrics.csv"
    lines = metrics.read_text().splitlines()
    header = lines[0].split(",")
    step = header.index("step")
    metrics.write_text("\n".join([lines[0]] + [",".join("nan" if i == step else v for i, v in enumerate(l.split(",")))
                                               for l in lines[1:]]) + "\n")
    [row], _ = report([str(sweep_dir)], str(tmp_path / "out"))
    assert "metrics.csv unreadable" in row.status and row.label == "²-a"


def test_ctrl_c_in_evaluate_is_exit_130(monkeypatch, tmp_path, trained_run):
    import signal
    from attnlab.lit import LitGPT

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt
    monkeypatch.setattr(LitGPT, "test_step", interrupted)
    cfg = command_cfg("evaluate", [f"run={trained_run}", "limit_batches=2"], tmp_path / "out")
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_task(evaluate, cfg)
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert exit_info.value.code == 130


@pytest.mark.subprocess
def test_the_attnlab_command_runs_the_tools_from_any_folder(tmp_path):
    exe = Path(sys.executable).parent / "attnlab"
    if not exe.exists():
        pytest.skip("the console script is installed by pip install -e .")
    r = subprocess.run([str(exe), "train", "mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                        "test_after_fit=false", "logger=csv"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"))  # outputs under the current folder
    r = subprocess.run([str(exe), "evaluate", "run=last", "batch_size=0"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "batch_size=0 must be an integer >= 1" in r.stdout + r.stderr
    r = subprocess.run([str(exe), "fly"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "must be one of ['train', 'sample', 'evaluate', 'analyze', 'export', 'report'], got 'fly'" in r.stderr


def test_the_attnlab_command_names_its_commands(capsys):
    from attnlab import commands
    for argv in ([], ["fly"]):
        with pytest.raises(SystemExit) as e:
            commands.main(argv)
        assert e.value.code == 2
        assert "must be one of ['train', 'sample', 'evaluate', 'analyze', 'export', 'report']" in capsys.readouterr().err


@pytest.mark.subprocess
def test_a_built_wheel_installed_in_a_fresh_venv_trains_from_an_empty_folder(tmp_path):
    """``pip install .`` (not editable): the wheel carries the package, its configs and the launcher plugin, so
    ``attnlab train mode=debug`` works from a folder that has no checkout. The fresh venv borrows this one's
    dependencies through a .pth line (a .pth file inside that folder, e.g. an editable attnlab, is not read)."""
    import sysconfig
    import venv
    wheels, env, empty = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    source = tmp_path / "source"  # the tracked files only: a build/ or egg-info left in the checkout could add files
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).exists() or (ROOT / name).is_symlink():
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(wheels)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "attnlab-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                        "-q", *map(str, wheels.glob("attnlab-*.whl"))], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    empty.mkdir()
    where = subprocess.run([str(python), "-c", "import attnlab, attnlab.conf; print(attnlab.__file__)"], cwd=empty,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(env), where  # the installed copy, not the checkout
    r = subprocess.run([str(env / "bin" / "attnlab"), "train", "mode=debug"], cwd=empty, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    status = list(empty.glob("outputs/*/*/status.json"))
    assert len(status) == 1 and json.loads(status[0].read_text())["status"] == "finished"
    assert list(status[0].parent.glob("checkpoints/*.ckpt")) and (status[0].parent / "train.log").is_file()


def test_a_bug_is_shown_as_a_bug_not_as_bad_input(monkeypatch, caplog, tmp_path):
    """Only attnlab.errors' classes are bad input (one line, exit 2); a ValueError from a bug keeps its traceback
    and is said to be a bug, also when it happens where settings are checked."""
    from attnlab import train as train_module
    from conftest import compose

    def broken(*args, **kwargs):
        raise ValueError("an index went wrong")
    import attnlab.attention
    monkeypatch.setattr(attnlab.attention, "build_attention", broken)  # where the spec checks the settings
    cfg = compose(["mode=debug"], tmp_path / "run")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="attnlab"), pytest.raises(ValueError, match="an index went wrong"):
        run_task(train_module.train, cfg, records_status=True)
    assert any("this is a bug in attnlab" in r.getMessage() and "an index went wrong" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="attnlab"), pytest.raises(ValueError):
        run_plain("report", lambda: broken())
    assert any("this is a bug in attnlab" in r.getMessage() for r in caplog.records)


def test_a_setting_the_model_refuses_is_bad_input_with_one_line(caplog, tmp_path):
    from attnlab.train import train
    from conftest import compose
    cfg = compose(["mode=debug", "model.d_model=30", "model.n_head=4"], tmp_path / "run")
    expect_one_line(caplog, train, cfg, "model.d_model=30 is not divisible by model.n_head=4")


def test_evaluate_with_a_stride_scores_each_target_once_and_equals_the_plain_number_at_the_context(trained_run,
                                                                                                 tmp_path):
    from attnlab.run_folder import RunFolder
    context = RunFolder(trained_run).settings()["model"]["context"]
    run = lambda name, *more: evaluate(command_cfg("evaluate", [f"run={trained_run}", "split=val", *more],  # noqa: E731
                                                   tmp_path / name))
    plain, same, strided = run("plain"), run("same", f"stride={context}"), run("strided", f"stride={context // 4}")
    assert same["loss"] == plain["loss"] and same["targets"] == plain["targets"]
    assert strided["targets"] == plain["targets"] and strided["loss"] != plain["loss"]  # more context per target
    cfg = command_cfg("evaluate", [f"run={trained_run}", f"stride={context + 1}"], tmp_path / "bad")
    from attnlab.errors import ConfigError
    with pytest.raises(ConfigError, match=rf"stride={context + 1} must be in \[1, {context}\]"):
        evaluate(cfg)
