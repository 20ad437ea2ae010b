"""sample.py and evaluate.py on a trained run: rebuilt from the run's folder, seeded, and one clear line for bad
input (exit code 2)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from attnlab.sample import sample
from attnlab.schema import ConfigError
from conftest import ROOT

TRAIN = ["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=6", "test_after_fit=false",
         "callbacks.model_summary=null", "callbacks.attention_picture=null", "trainer.enable_model_summary=false",
         "++callbacks.last_checkpoint._target_=attnlab.callbacks.LastCheckpoint",
         "++callbacks.last_checkpoint.dirpath=${paths.checkpoint_dir}"]


def run(script, *args, cwd, expect=0):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    assert r.returncode == expect, (r.stdout + r.stderr)[-4000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Longformer run with rotary positions and a checkpoint."""
    root = tmp_path_factory.mktemp("sample")
    run("train.py", *TRAIN, "attention=longformer", "attention.window=8", "model.positions=rope", "logger=wandb",
        "logger.wandb.log_model=true",
        f"paths.outputs_root={root / 'outputs'}", cwd=root)
    [folder] = [p.parent for p in (root / "outputs").glob("**/run.json")]
    return root, folder


def sample_cfg(tmp_path: Path, **overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"{k}={v}" for k, v in overrides.items()],
                      return_hydra_config=True)
    out = tmp_path / f"sample{len(list(tmp_path.glob('sample*')))}"
    out.mkdir()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    HydraConfig().set_config(cfg)
    return cfg


def test_training_writes_sample_texts_at_each_validation_and_a_wandb_table(trained):
    root, folder = trained
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["step"] for r in rows} == {6}  # 3 prompts after the one validation at step 6
    assert len({r["prompt"] for r in rows}) == 3 and all(r["continuation"] for r in rows)
    assert list(folder.glob("wandb/*/files/media/table/samples_*.table.json"))
    assert "log_model=true is ignored" in (folder / "train.log").read_text()  # offline here: nothing to upload


def test_sample_py_prints_samples_from_a_run_folder(trained):
    root, folder = trained
    out = run("sample.py", f"run={folder}", "prompt=ROMEO:", "num_samples=2", "max_new_tokens=40",
              f"paths.outputs_root={root / 'outputs'}", cwd=root)
    assert out.count("--- sample") == 2 and out.count("ROMEO:") >= 2
    [record] = (root / "outputs" / "sample").glob("*/samples.json")
    record = json.loads(record.read_text())
    assert len(record["samples"]) == 2 and record["checkpoint"].endswith(".ckpt")
    assert all(len(s) >= 1 for s in record["samples"])


def test_run_last_is_the_newest_run_and_sampling_is_seeded(trained, tmp_path):
    root, folder = trained
    common = dict(run="last", max_new_tokens=30, num_samples=2, seed=7)
    cfg = sample_cfg(tmp_path, **common, **{"paths.outputs_root": root / "outputs"})
    first = sample(cfg)
    again = sample(sample_cfg(tmp_path, **common, **{"paths.outputs_root": root / "outputs"}))
    other = sample(sample_cfg(tmp_path, **{**common, "seed": 8}, **{"paths.outputs_root": root / "outputs"}))
    assert first == again and first != other
    assert str(folder) in (tmp_path / "sample0" / "samples.json").read_text()


def test_cached_and_recomputed_greedy_samples_agree(trained, tmp_path):
    root, folder = trained
    texts = [sample(sample_cfg(tmp_path, run=folder, top_k=1, max_new_tokens=120, use_cache=c, prompt="KING"))
             for c in ("true", "false")]  # 120 > the context of 64: rotary streams, the recomputation crops
    assert texts[0][0][:60] == texts[1][0][:60]  # identical within the context


@pytest.mark.parametrize("override,message", [
    ({"max_new_tokens": 0}, "max_new_tokens=0 must be an integer in \\[1, 1000000\\]"),
    ({"max_new_tokens": 10 ** 9}, "max_new_tokens=1000000000 must be an integer in \\[1, 1000000\\]"),
    ({"temperature": 0}, "temperature=0 must be a number >= 0.001"),
    ({"top_k": 0}, "top_k=0 must be an integer >= 1, or null"),
    ({"prompt": "'ROMEO§'"}, r"has characters the run's tokenizer does not know: \['§'\]"),
    ({"device": "tpu"}, "device='tpu' must be one of"),
])
def test_bad_sampling_settings_name_the_value(trained, tmp_path, override, message):
    root, folder = trained
    with pytest.raises(ConfigError, match=message):
        sample(sample_cfg(tmp_path, run=folder, **override))


def test_bad_sampling_setting_exits_2(trained):
    root, folder = trained
    out = run("sample.py", f"run={folder}", "temperature=-1", cwd=root, expect=2)
    assert "temperature=-1.0 must be a number >= 0.001" in out or "temperature=-1 must be a number >= 0.001" in out


def test_a_run_folder_without_checkpoint_or_with_another_model_is_refused(trained, tmp_path):
    root, folder = trained
    empty = tmp_path / "empty_run"
    shutil.copytree(folder / ".hydra", empty / ".hydra")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        sample(sample_cfg(tmp_path, run=empty))
    resized = tmp_path / "resized_run"
    shutil.copytree(folder, resized)
    (resized / "run.json").unlink()  # its checkpoints are then looked for in its own folder
    cfg = OmegaConf.load(resized / ".hydra" / "config.yaml")
    cfg.model.d_model = 32
    OmegaConf.save(cfg, resized / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="was trained with other settings than .* config says \(model.d_model\)"):
        sample(sample_cfg(tmp_path, run=resized))
    with pytest.raises(ConfigError, match="no such file or folder"):
        sample(sample_cfg(tmp_path, run=tmp_path / "nowhere"))


def test_evaluate_on_other_text_with_the_runs_tokenizer(trained, tmp_path):
    root, folder = trained
    text = tmp_path / "other.txt"
    text.write_text("KING HENRY:\nOnce more unto the breach, dear friends, once more;\n" * 200, encoding="utf-8")
    out = run("evaluate.py", f"run={folder}", "dataset=text_files", f"dataset.path={text}", "split=test",
              f"paths.outputs_root={tmp_path / 'outputs'}", cwd=tmp_path)
    [metrics] = (tmp_path / "outputs" / "evaluate").glob("*/metrics.json")
    metrics = json.loads(metrics.read_text())
    assert metrics["dataset"] == "text_files" and metrics["bpb"] > 0 and metrics["ppl"] > 1
    # encoded with the run's tokenizer (the Shakespeare characters), not one trained on this text
    used = Path(metrics["tokens"]) / "tokenizer.json"
    assert used.parent.name.startswith("text_files-char-")
    runs_own = Path(re.search(r"'cache_entry': '([^']+)'", (folder / "train.log").read_text()).group(1)) / "tokenizer.json"
    assert json.loads(used.read_text()) == json.loads(runs_own.read_text())


def test_a_sweeps_job_is_found_by_its_number(tmp_path):
    from attnlab.runs import find_run
    job = tmp_path / "multirun" / "2026-01-01_00-00-00" / "3-attention=full,seed=2"  # = and , need quoting in Hydra
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("{}")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert find_run(str(job.parent / "3")) == (job, job / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="no such file or folder"):
        find_run(str(job.parent / "4"))
