"""Run folders written by earlier versions stay usable: ``tests/fixtures/run-format-2026-12-04`` was written by
attnlab at commit ec8768e (before RunSpec and RunFolder; run.json without a spec). A copy of it, moved to a new
place, must still sample, evaluate, appear in a report and resume; and a folder written today records its spec."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from attnlab.run_folder import RunFolder
from conftest import compose

FIXTURE = Path(__file__).parent / "fixtures" / "run-format-2026-12-04"
pytestmark = pytest.mark.integration


@pytest.fixture
def old_run(tmp_path) -> Path:
    folder = tmp_path / "moved" / "somewhere" / "old-run"
    shutil.copytree(FIXTURE, folder)
    return folder


def test_an_old_run_folder_reads_its_settings_from_its_config(old_run):
    assert "spec" not in RunFolder(old_run).record()  # the old format indeed
    settings = RunFolder(old_run).settings()
    assert settings["model"]["d_model"] == 16 and settings["attention"]["window"] == 8
    assert settings["dataset"]["source"] == "shakespeare" and settings["data"]["batch_size"] == 16


def test_an_old_run_folder_samples_evaluates_and_is_reported(old_run, tmp_path):
    from attnlab.evaluate import evaluate
    from attnlab.report import report
    from attnlab.sample import sample
    from test_commands import command_cfg
    texts = sample(command_cfg("sample", [f"run={old_run}", "max_new_tokens=8", "num_samples=1", "prompt=ROMEO:"],
                               tmp_path / "sample"))
    assert len(texts) == 1 and len(texts[0]) >= 8  # 8 new characters at least (the prompt is not returned)
    result = evaluate(command_cfg("evaluate", [f"run={old_run}", "split=val", "limit_batches=2"], tmp_path / "eval"))
    assert result["ppl"] > 1 and result["targets"] > 0
    runs, _ = report([str(old_run)], str(tmp_path / "report"))
    assert [(r.attention, r.backend, r.status) for r in runs] == [("longformer", "banded", "finished")]


def test_an_old_run_folder_resumes_and_then_records_its_spec(old_run, tmp_path):
    from attnlab.train import train
    overrides = yaml.safe_load((old_run / ".hydra" / "overrides.yaml").read_text())
    overrides = [o for o in overrides if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=2",
                                                                                    f"ckpt_path={old_run}"]
    cfg = compose(overrides, tmp_path / "outputs" / "resumed")
    train(cfg)
    status = json.loads((old_run / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == 8  # 4 steps of the fixture, 4 more
    record = RunFolder(old_run).record()
    assert record["spec"]["model"]["d_model"] == 16 and record["spec"]["backend"] == "banded"
    assert record["run_key"]  # still there, for ckpt_path=last


def test_a_new_run_folder_records_its_spec_and_no_absolute_path(make_cfg):
    from attnlab.train import train
    cfg = make_cfg(["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test_after_fit=false",
                    "logger=csv", "callbacks.attention_picture=null", "callbacks.sample_texts=null"])
    train(cfg)
    folder = Path(cfg.paths.output_dir)
    record = RunFolder(folder).record()
    spec = record["spec"]
    assert spec["attention"]["name"] == "full" and spec["init"] == {"kind": "scratch", "source": ""}
    assert spec["names"]["model"] == str(cfg.model.name) and spec["device"] == "cpu"
    assert str(folder) not in json.dumps(record) and str(Path.home()) not in json.dumps(record)
    assert RunFolder(folder).settings()["model"] == spec["model"]  # read back from the record, not the config


def test_ckpt_path_last_still_finds_a_run_of_the_earlier_format(tmp_path):
    """The run key dropped settings that were never read (data.dataset, data.tokenizer repeated the groups): the
    same command still finds the fixture's run, whose run.json holds the key as ec8768e computed it."""
    from attnlab import checkpoints
    outputs = tmp_path / "outputs"
    old_run = outputs / "longformer-tiny-shakespeare-char" / "2026-12-05_02-38-56"
    shutil.copytree(FIXTURE, old_run)
    overrides = yaml.safe_load((old_run / ".hydra" / "overrides.yaml").read_text())
    cfg = compose([*overrides, "ckpt_path=last"], outputs / "longformer-tiny-shakespeare-char" / "later")
    recorded = RunFolder(old_run).record()["run_key"]
    assert checkpoints.run_keys(cfg)[0] != recorded and recorded in checkpoints.run_keys(cfg)
    assert checkpoints.runs_for(checkpoints.run_keys(cfg), outputs) == [old_run]
    resume = checkpoints.resolve(cfg)  # what train() resumes: the fixture's own checkpoint
    assert resume.folder == old_run and resume.state["global_step"] == 4


def test_an_old_folders_dataset_keys_its_source_never_read_are_dropped(old_run, tmp_path, caplog):
    """experiment=nanogpt_cpu set val_fraction/test_fraction on the plays until 2026-12-05 (ignored there); such a
    folder still evaluates, saying what it ignores."""
    import logging
    from attnlab import runs
    config = old_run / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["dataset"].update(val_fraction=0.1, test_fraction=0.001)
    config.write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.WARNING):
        loaded = runs.load_run(str(old_run), str(tmp_path / "cache"))
        dm = loaded.datamodule(str(tmp_path / "cache"))
    assert dm.tokens["val"].size > 0 and "['test_fraction', 'val_fraction'] were never read" in caplog.text


def test_seeds_group_across_the_format_change():
    """report.py groups runs that differ only in their seed; a run folder of before 2026-12-05 repeated the dataset
    and tokenizer in data, which must not make it another experiment."""
    from attnlab.report import experiment_key
    new = yaml.safe_load((FIXTURE / ".hydra" / "config.yaml").read_text())
    old = {**new, "data": {**new["data"], "dataset": "${dataset}", "tokenizer": "${tokenizer}"}}
    new = {**new, "data": {k: v for k, v in new["data"].items() if k not in ("dataset", "tokenizer")}, "seed": 1}
    assert experiment_key(old) == experiment_key(new)
