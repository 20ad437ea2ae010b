"""Runs you can trust: last.ckpt before any validation, the best checkpoint named by its own score, resume that
finds this run's checkpoint and no other, refuses other settings, falls back from a damaged file, and loads
checkpoints as data (a crafted pickle runs no code)."""
import csv
import json
import logging
import os
import re
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from attnlab import checkpoints
from attnlab.train import ConfigError, train


class CrashAt(L.Callback):
    """Stands in for a crash (power loss, OOM) in the middle of the first epoch."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


RUN = ["model=tiny", "logger=csv", "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=30",
       "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1", "callbacks.rich_progress=null",
       "callbacks.attention_picture=null", "callbacks.model_summary=null", "test_after_fit=false"]


def test_last_checkpoint_exists_before_the_first_validation(make_cfg):
    cfg = make_cfg([*RUN, "callbacks.last_checkpoint.every_n_train_steps=5",
                    "+callbacks.crash._target_=test_checkpoints.CrashAt", "+callbacks.crash.step=13"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)  # validation only at the end of the epoch (step 30): it never ran
    last = Path(cfg.paths.checkpoint_dir) / "last.ckpt"
    assert checkpoints.safe_load(last)["global_step"] == 10


def test_best_checkpoint_is_ranked_by_its_own_validation(make_cfg):
    # validation at each epoch end (every 10 steps), the periodic save every 10 steps too: a save that ran
    # before its step's validation would carry the previous validation's score
    cfg = make_cfg([*RUN, "trainer.max_epochs=3", "trainer.limit_train_batches=10",
                    "callbacks.last_checkpoint.every_n_train_steps=10"])
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        val = [(int(r["step"]), float(r["val/ppl"])) for r in csv.DictReader(f) if r.get("val/ppl")]
    assert len(val) == 3
    [best] = [p for p in Path(cfg.paths.checkpoint_dir).glob("step*.ckpt")]
    step, ppl = re.match(r"step(\d+)-val_ppl([\d.]+)\.ckpt", best.name).groups()
    best_step, best_ppl = min(val, key=lambda sv: sv[1])
    assert float(ppl) == pytest.approx(best_ppl, abs=0.006)  # the best score of the run ...
    assert int(step) == best_step + 1 == checkpoints.safe_load(best)["global_step"]  # ... of these very weights
    # (the CSV logger writes a validation's metrics at the index of the step it followed, one below global_step)
    assert (Path(cfg.paths.checkpoint_dir) / "last.ckpt").exists()


def _fake_run(root: Path, name: str, key: str, settings: dict, mtime: float, files=("last.ckpt",)) -> Path:
    run = root / name
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True)
    checkpoints.write_run_file(run, key)
    for i, f in enumerate(files):
        torch.save({"state_dict": {}, "global_step": i, "attnlab": {"run_key": key, "settings": settings}}, ckdir / f)
        os.utime(ckdir / f, (mtime - i, mtime - i))
    return ckdir


def test_ckpt_path_last_resumes_this_run_only(make_cfg, tmp_path):
    seed1 = make_cfg(["seed=1", "ckpt_path=last"], "seed1")
    seed2 = make_cfg(["seed=2", "ckpt_path=last"], "seed2")
    now = time.time()
    mine = _fake_run(tmp_path, "old-seed1", checkpoints.run_key(seed1), checkpoints.settings_of(seed1), now)
    _fake_run(tmp_path, "newer-seed2", checkpoints.run_key(seed2), checkpoints.settings_of(seed2), now + 100)
    path, state, _ = checkpoints.resolve(seed1)
    assert Path(path) == mine / "last.ckpt"  # not the newer checkpoint of the other seed
    other = make_cfg(["seed=3", "ckpt_path=last"], "seed3")
    with pytest.raises(checkpoints.CheckpointError, match=r"ckpt_path=last: no checkpoint of this run \(run key"):
        checkpoints.resolve(other)


def test_the_same_command_again_finds_its_checkpoint_in_the_earlier_run_folder(make_cfg):
    args = ["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "test_after_fit=false",
            "++callbacks.last_checkpoint._target_=attnlab.callbacks.LastCheckpoint",
            "++callbacks.last_checkpoint.dirpath=${paths.checkpoint_dir}"]
    first = make_cfg(args, "2026-01-01_10-00-00")
    train(first)
    again = make_cfg([*args, "ckpt_path=last"], "2026-01-01_11-00-00")  # a new run folder, as Hydra makes one
    assert checkpoints.run_key(again) == checkpoints.run_key(first)
    path, state, _ = checkpoints.resolve(again)
    assert Path(path) == Path(first.paths.checkpoint_dir) / "last.ckpt" and state["global_step"] == 4
    assert checkpoints.run_key(make_cfg([*args, "seed=5"], "other")) != checkpoints.run_key(first)


def test_a_checkpoint_with_other_settings_is_refused_naming_the_keys(make_cfg, tmp_path):
    full = make_cfg(["attention=full"], "full")
    ckdir = _fake_run(tmp_path, "a-full-run", checkpoints.run_key(full), checkpoints.settings_of(full), time.time())
    lf = make_cfg(["attention=longformer", f"ckpt_path={ckdir / 'last.ckpt'}"], "lf")
    with pytest.raises(checkpoints.CheckpointError, match=r"different settings \(.*attention.global_tokens, "
                                                          r"attention.name, .*init_from="):
        checkpoints.resolve(lf)


def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(make_cfg, tmp_path, caplog):
    cfg = make_cfg(["ckpt_path=last"], "run")
    ckdir = _fake_run(tmp_path, "r", checkpoints.run_key(cfg), checkpoints.settings_of(cfg), time.time(),
                      files=("last.ckpt", "step000005-val_ppl9.00.ckpt"))
    data = (ckdir / "last.ckpt").read_bytes()
    (ckdir / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated by a crash of the disk, say
    os.utime(ckdir / "last.ckpt", (time.time() + 5, time.time() + 5))
    with caplog.at_level(logging.WARNING):
        path, _, _ = checkpoints.resolve(cfg)
    assert Path(path).name == "step000005-val_ppl9.00.ckpt"
    assert "last.ckpt cannot be loaded" in caplog.text
    explicit = make_cfg([f"ckpt_path={ckdir / 'last.ckpt'}"], "explicit")
    with pytest.raises(checkpoints.CheckpointError, match=r"last.ckpt cannot be loaded"):
        checkpoints.resolve(explicit)  # a file named explicitly is not silently replaced


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(str(target))}, evil)
    assert not target.exists()
    with pytest.raises(checkpoints.CheckpointError, match=r"evil.ckpt cannot be loaded \(it holds Python objects"):
        checkpoints.safe_load(evil)
    assert not target.exists()
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.CheckpointIO().load_checkpoint(evil)
    assert not target.exists()


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    io = checkpoints.CheckpointIO()
    target = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt("power loss")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert target.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_init_from_starts_from_weights_and_refuses_misfits(make_cfg, tmp_path):
    first = make_cfg(["mode=debug", "trainer.max_epochs=1", "test_after_fit=false",
                      "++callbacks.last_checkpoint._target_=attnlab.callbacks.LastCheckpoint",
                      "++callbacks.last_checkpoint.dirpath=${paths.checkpoint_dir}"], "first")
    train(first)
    last = Path(first.paths.checkpoint_dir) / "last.ckpt"
    tuned = make_cfg(["mode=debug", "attention=longformer", "trainer.max_epochs=1", "test_after_fit=false",
                      f"init_from={last}"], "tuned")
    train(tuned)  # another attention type, same weights: allowed
    with open(Path(tuned.paths.output_dir) / "csv" / "metrics.csv") as f:
        assert "init/loss" not in f.readline()  # trained weights: no "loss at initialisation" check (or warning)
    separate = make_cfg(["mode=debug", "attention=longformer", "attention.global_projections=true",
                         "trainer.max_epochs=1", "test_after_fit=false", "trainer.limit_train_batches=1",
                         "optimizer.lr=1e-12", f"init_from={last}"], "separate")
    train(separate)  # Longformer's own global projections start as copies of the shared ones
    weights = checkpoints.safe_load(Path(separate.paths.output_dir) / "checkpoints" / "last.ckpt")["state_dict"]
    torch.testing.assert_close(weights["model.blocks.0.attn.qkv_global.weight"], weights["model.blocks.0.attn.qkv.weight"])
    wider = make_cfg(["mode=debug", "model.d_model=96", f"init_from={last}"], "wider")
    with pytest.raises(ConfigError, match=r"init_from=.*last.ckpt: its weights do not fit this model"):
        train(wider)


def test_execution_settings_are_not_the_run_so_ckpt_path_last_finds_it_with_threads_1(make_cfg, tmp_path):
    """threads, loader workers, the progress bar and recording callbacks change how a run is computed or shown,
    not what it trains: the checkpoints of a run started with 2 threads resume with threads=1 (what the busy
    machine warning tells a user to do). A run of before 2026-12-04 (its key counted them) still resumes."""
    ran = make_cfg(["threads=2", "ckpt_path=last"], "ran")
    ckdir = _fake_run(tmp_path, "run", checkpoints.run_key(ran), checkpoints.settings_of(ran), time.time())
    for change in (["threads=1"], ["data.num_workers=2"], ["callbacks.rich_progress=null"],
                   ["trainer.log_every_n_steps=7"], ["data.eval_batch_size=3"]):
        again = make_cfg([*change, "ckpt_path=last"], "again-" + change[0].split("=")[0])
        assert checkpoints.run_key(again) == checkpoints.run_key(ran), change
        assert Path(checkpoints.resolve(again).path) == ckdir / "last.ckpt"
    assert checkpoints.run_key(make_cfg(["optimizer.lr=0.01"], "lr")) != checkpoints.run_key(ran)
    old = make_cfg(["threads=3", "ckpt_path=last"], "old")
    legacy = _fake_run(tmp_path, "legacy", checkpoints.run_key(old, legacy=True), checkpoints.settings_of(old),
                       time.time() + 10)
    assert Path(checkpoints.resolve(old).path) == legacy / "last.ckpt"


def test_a_refused_resume_leaves_a_folder_that_report_does_not_list(make_cfg, tmp_path):
    from attnlab.report import find_runs
    from attnlab.schema import ConfigError
    from attnlab.errors import UserError
    cfg = make_cfg(["mode=debug", "ckpt_path=last", "seed=77"], "nothing-to-resume")
    with pytest.raises(UserError, match="no checkpoint of this run"):
        train(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status["status"] == "refused"
    with pytest.raises(ConfigError, match="no run folders"):
        from attnlab.report import report
        report([str(tmp_path)])
    assert find_runs([str(tmp_path)]) == []


def test_run_last_takes_the_newest_finished_run_and_says_which(tmp_path, caplog):
    from attnlab.runs import newest_run

    def run(name: str, status: str | None, age: float) -> Path:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("{}\n")
        (folder / "checkpoints").mkdir()
        torch.save({"global_step": 3}, folder / "checkpoints" / "last.ckpt")
        os.utime(folder / "checkpoints" / "last.ckpt", (time.time() - age, time.time() - age))
        if status:
            (folder / "status.json").write_text(json.dumps({"status": status, "step": 3}))
        return folder

    done = run("finished-earlier", "finished", 100)
    training = run("still-training", None, 1)
    with caplog.at_level(logging.INFO):
        assert newest_run(tmp_path) == done  # not the newer run that is still training
    assert "finished at step 3" in caplog.text and "1 newer run(s) not finished" in caplog.text
    (done / "status.json").write_text(json.dumps({"status": "interrupted", "step": 3}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert newest_run(tmp_path) == training
    assert "no finished run" in caplog.text and "running or killed" in caplog.text


def test_document_masking_off_keeps_the_run_key_a_run_had_before_the_setting_existed(make_cfg):
    from omegaconf import open_dict
    now = make_cfg(["mode=debug"], "now")
    before = make_cfg(["mode=debug"], "before")
    with open_dict(before):
        del before.data["document_mask"]  # a config from before 2026-12-05
    assert checkpoints.run_key(now) == checkpoints.run_key(before)
    assert checkpoints.run_key(make_cfg(["mode=debug", "data.document_mask=true"], "on")) != checkpoints.run_key(now)


def test_model_document_end_is_not_a_setting_but_data_document_mask_is(make_cfg):
    from attnlab.spec import RunSpec
    with pytest.raises(ConfigError, match="model.document_end is set from the tokenizer; use data.document_mask=true"):
        RunSpec.from_hydra(make_cfg(["mode=debug", "+model.document_end=0"]))
    with pytest.raises(ConfigError, match="data.document_mask"):
        RunSpec.from_hydra(make_cfg(["mode=debug", "data.document_mask=sometimes"]))
