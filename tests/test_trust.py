"""Nothing a user does by accident corrupts a run, and nothing in a run folder runs code.

One test (or a few) per kind of damage: a run folder whose config asks for code, two runs started in the
same second, a resume that forgets the best score, a moved or copied outputs tree, a crash before the first
periodic save, bytes flipped in a checkpoint, a diverged step, training text edited after the run, an
interrupt, two runs of one config, and mixed precision with the fused optimizer.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from attnlab import checkpoints, runs
from attnlab.schema import ConfigError
from attnlab.train import train
from conftest import FAST_TRAIN, ROOT, compose, default_sigint

FAST = FAST_TRAIN


class StopAt(L.Callback):
    """Raises at a step given by the environment (so the config, hence the run key, is the same when the run
    is started again without it): KeyboardInterrupt stands in for Ctrl-C, RuntimeError for a crash."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        at = os.environ.get("ATTNLAB_TEST_STOP_AT")
        if at and trainer.global_step == int(at.split(":")[0]) and not at.endswith(":in_validation"):
            raise KeyboardInterrupt() if at.endswith(":interrupt") else RuntimeError("simulated crash")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        at = os.environ.get("ATTNLAB_TEST_STOP_AT")  # "<step>:in_validation": Ctrl-C in that step's validation
        if at and at.endswith(":in_validation") and not trainer.sanity_checking and batch_idx == 1 \
                and trainer.global_step == int(at.split(":")[0]):
            raise KeyboardInterrupt()


STOPPABLE = ["+callbacks.stop._target_=test_trust.StopAt"]


@pytest.fixture
def run_folder(trained_run) -> Path:
    return trained_run


def copy_run(folder: Path, dest: Path, keep_spec: bool = False) -> Path:
    """A copy of a run folder. Without ``keep_spec`` its run.json loses its spec, so the folder's settings are
    read from ``.hydra/config.yaml`` (as a run folder of before 2026-12-05 is read): the tests below craft that
    file. ``test_a_crafted_spec_is_refused_as_a_crafted_config_is`` crafts the spec itself."""
    shutil.copytree(folder, dest)
    if not keep_spec:
        record = json.loads((dest / "run.json").read_text())
        record.pop("spec", None)
        (dest / "run.json").write_text(json.dumps(record))
    return dest


SPEC_CRAFTS = [  # (what a crafted run.json spec says, the one line that refuses it)
    (lambda s: s["data"]["dataset"].update(_target_="builtins.open"), r"sets dataset._target_=.*never chooses"),
    (lambda s: s["model"].update(name="${unique_dir:/tmp/x}"), r"model.name=.*a resolver call"),
    (lambda s: s["data"].update(batch_size=0), r"data.batch_size=0; it must be an integer >= 1"),
    (lambda s: s["data"]["dataset"].update(val_plays=-1), r"dataset.val_plays=-1; it must be an integer >= 1"),
    (lambda s: s.update(seed=-5), r"seed=-5; it must be an integer in \[0, 4294967295\]"),
    (lambda s: s.pop("attention"), r"run.json has no attention settings"),
    (lambda s: s["data"].update(document_mask="yes"), r"data.document_mask='yes'; it must be"),
    (lambda s: s["data"].update(document_mask=True),  # the checkpoint says how it read its windows
     r"trained with other settings than .* says \(data.document_mask\); the folder was altered"),
]


@pytest.mark.parametrize("craft,message", SPEC_CRAFTS)
def test_a_crafted_spec_is_refused_as_a_crafted_config_is(run_folder, tmp_path, craft, message):
    folder = copy_run(run_folder, tmp_path / "crafted", keep_spec=True)
    record = json.loads((folder / "run.json").read_text())
    craft(record["spec"])
    (folder / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=message):
        runs.load_run(str(folder), str(tmp_path / "cache"))


# 1. a run folder's config runs no code --------------------------------------------------------------------

def test_a_run_folders_config_cannot_call_anything(run_folder, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    evil = copy_run(run_folder, tmp_path / "evil")
    config = evil / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["_args_"] = [{"_target_": "builtins.open", "file": str(victim), "mode": "w"}]
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"sets data._args_=.*never chooses what code runs"):
        runs.load_run(str(evil), str(tmp_path / "cache"))
    assert victim.read_text() == "precious"
    cfg["data"].pop("_args_")
    cfg["model"]["name"] = "${unique_dir:" + str(tmp_path / "made_by_a_resolver") + "}"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"model.name=.*a resolver call"):
        runs.load_run(str(evil), str(tmp_path / "cache"))
    assert not (tmp_path / "made_by_a_resolver").exists()


# 2. two runs started in the same second ------------------------------------------------------------------

@pytest.mark.subprocess
def test_two_processes_resolving_the_same_run_folder_get_two_folders(tmp_path):
    code = ("import sys; from attnlab.sweep import unique_dir; "
            "print(unique_dir(sys.argv[1]), unique_dir(sys.argv[1]))")  # the second call: the same answer
    path = str(tmp_path / "runs" / "2026-01-01_00-00-00")
    outs = [subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert outs[0][0] == outs[0][1] == path and outs[1][0] == outs[1][1] == path + "_2"
    config = (ROOT / "conf" / "config.yaml").read_text()
    assert "dir: ${unique_dir:${paths.runs_dir}/" in config and "dir: ${unique_dir:${paths.outputs_root}/multirun/" in config


def test_ckpt_path_last_refuses_a_checkpoint_of_another_run_key(make_cfg, tmp_path):
    cfg = make_cfg(["ckpt_path=last"], "mine")
    key = checkpoints.run_key(cfg)
    folder = tmp_path / "shared-folder"
    (folder / "checkpoints").mkdir(parents=True)
    checkpoints.write_run_file(folder, key)
    torch.save({"state_dict": {}, "global_step": 3, "attnlab": {"run_key": "someone-else", "settings": None}},
               folder / "checkpoints" / "last.ckpt")  # written by another run that shared the folder
    with pytest.raises(checkpoints.CheckpointError, match=r"belongs to another run \(run key someone-else"):
        checkpoints.resolve(cfg)


# 3. the best validation score survives a resume ----------------------------------------------------------

def test_val_ppl_best_is_carried_across_a_resume():
    from attnlab.attention import build_attention
    from attnlab.lit import LitGPT
    from attnlab.model import GPTConfig
    make = lambda: LitGPT(GPTConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, context=8, vocab_size=11),  # noqa: E731
                          build_attention({"name": "full"}))
    before = make()
    before.val_ppl_best.update(torch.tensor(11.708))
    checkpoint: dict = {}
    before.on_save_checkpoint(checkpoint)
    after = make()
    after.on_load_checkpoint(checkpoint)
    after.val_ppl_best.update(torch.tensor(12.019))  # the first validation after the resume is worse
    assert float(after.val_ppl_best.compute()) == pytest.approx(11.708)


# 5. a moved or copied outputs tree -----------------------------------------------------------------------

def test_nothing_a_run_records_is_an_absolute_path(run_folder):
    for name in ("run.json", "status.json"):
        text = (run_folder / name).read_text()
        assert str(run_folder.parent.parent) not in text and '"/' not in text, (name, text)
    state = torch.load(run_folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert str(run_folder) not in json.dumps(state.get("callbacks", {}), default=str)


def test_a_moved_run_folder_samples_and_evaluates_without_its_corpus_or_token_cache(run_folder, tmp_path):
    moved = copy_run(run_folder, tmp_path / "elsewhere" / "run")
    empty_cache = tmp_path / "no-cache-here"
    loaded = runs.load_run(str(moved), str(empty_cache))
    assert loaded.checkpoint.parent == moved / "checkpoints"
    assert loaded.tokenizer.fingerprint == checkpoints.read_run_file(run_folder)["tokenizer"]
    assert not empty_cache.exists()  # the tokenizer came from the folder: no corpus read, nothing tokenised
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO:")])
    assert loaded.model.model.generate(ids, 5, 1.0, 1, True).shape == (1, 11)


@pytest.mark.integration
def test_resume_in_a_copied_tree_reads_and_writes_the_copy_only(tmp_path, monkeypatch):
    original = tmp_path / "a" / "outputs"
    args = [*FAST, *STOPPABLE, "trainer.limit_train_batches=8", "callbacks.last_checkpoint.every_n_train_steps=2"]
    first = compose(args, original / "r" / "2026-01-01_00-00-00")
    monkeypatch.setenv("ATTNLAB_TEST_STOP_AT", "5:crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(first)
    copy = tmp_path / "b" / "outputs"
    shutil.copytree(original, copy)
    before = {p: p.stat().st_mtime for p in original.rglob("*") if p.is_file()}
    monkeypatch.delenv("ATTNLAB_TEST_STOP_AT")
    again = compose([*args, "ckpt_path=last"], copy / "r" / "2026-01-01_01-00-00")
    resume = checkpoints.resolve(again)
    assert Path(resume.path).is_relative_to(copy) and resume.state["global_step"] == 4
    train(again)
    assert {p: p.stat().st_mtime for p in original.rglob("*") if p.is_file()} == before  # untouched
    done = copy / "r" / "2026-01-01_00-00-00"
    assert json.loads((done / "status.json").read_text())["status"] == "finished"
    assert checkpoints.safe_load(done / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_the_best_checkpoint_is_tracked_by_name_so_a_copy_tracks_its_own_file(tmp_path):
    from attnlab.callbacks import BestCheckpoint
    old = BestCheckpoint(dirpath=str(tmp_path / "old"), monitor="val/ppl")
    old.best_model_path = str(tmp_path / "old" / "step000010-val_ppl9.00.ckpt")
    old.best_k_models = {old.best_model_path: torch.tensor(9.0)}
    old.best_model_score = torch.tensor(9.0)
    state = old.state_dict()
    new = BestCheckpoint(dirpath=str(tmp_path / "copy"), monitor="val/ppl")
    new.load_state_dict(state)
    assert new.best_model_path == str(tmp_path / "copy" / "step000010-val_ppl9.00.ckpt")
    assert list(new.best_k_models) == [new.best_model_path] and float(new.best_model_score) == 9.0


# 6. no preset loses more than minutes --------------------------------------------------------------------

def test_last_ckpt_is_also_saved_by_wall_time(make_cfg, monkeypatch):
    cfg = make_cfg([*FAST, *STOPPABLE, "trainer.limit_train_batches=10",
                    "callbacks.last_checkpoint.every_n_train_steps=1000",
                    "callbacks.last_checkpoint.every_n_minutes=1e-9"])  # due after every step
    monkeypatch.setenv("ATTNLAB_TEST_STOP_AT", "7:crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    assert checkpoints.safe_load(Path(cfg.paths.checkpoint_dir) / "last.ckpt")["global_step"] == 7


def test_every_preset_saves_last_ckpt_by_time():
    default = yaml.safe_load((ROOT / "conf" / "callbacks" / "default.yaml").read_text())
    assert 0 < default["last_checkpoint"]["every_n_minutes"] <= 10


# 7. damage that keeps the file's shape; a diverged step --------------------------------------------------

def test_flipped_bytes_in_a_tensor_are_found_on_load(tmp_path):
    path = tmp_path / "last.ckpt"
    weights = torch.full((4096,), 1.2345)
    checkpoints.CheckpointIO().save_checkpoint({"state_dict": {"w": weights}, "global_step": 1}, path)
    assert torch.equal(checkpoints.safe_load(path)["state_dict"]["w"], weights)
    data = bytearray(path.read_bytes())
    at = data.find(weights[:4].numpy().tobytes()) + 1000
    data[at:at + 64] = bytes(b ^ 0x5A for b in data[at:at + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match=r"last.ckpt is damaged"):
        checkpoints.safe_load(path)


def test_non_finite_weights_never_replace_the_last_good_checkpoint(tmp_path):
    io, path = checkpoints.CheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan"), 1.0])}, "global_step": 2}, path)
    assert checkpoints.safe_load(path)["global_step"] == 1


def test_a_diverged_run_keeps_its_last_finite_checkpoint(make_cfg):
    cfg = make_cfg([*FAST, "optimizer.lr=1e9", "trainer.gradient_clip_val=null",
                    "callbacks.last_checkpoint.every_n_train_steps=1"])
    from attnlab.callbacks import TrainingDiverged
    with pytest.raises(TrainingDiverged):
        train(cfg)
    state = checkpoints.safe_load(Path(cfg.paths.checkpoint_dir) / "last.ckpt")
    assert not checkpoints.non_finite_weights(state["state_dict"])


# 8. a run pins its tokenizer -----------------------------------------------------------------------------

def trained_on_a_text_file(make_cfg, tmp_path) -> tuple[Path, list[str], Path]:
    """(the text file, the training arguments, the run folder) of a run trained on a small text file."""
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat.\n" * 400)
    args = [*FAST, "dataset=text_files", f"dataset.path={text}", "data.batch_size=4"]
    cfg = make_cfg(args, "run")
    train(cfg)
    return text, args, Path(cfg.paths.output_dir)


def test_editing_the_training_text_changes_nothing_for_a_trained_run(make_cfg, tmp_path):
    text, args, folder = trained_on_a_text_file(make_cfg, tmp_path)
    before = runs.load_run(str(folder), str(tmp_path / "cache")).tokenizer
    text.write_text("QXZ! brand new characters everywhere\n" * 400)  # the corpus is edited afterwards
    after = runs.load_run(str(folder), str(tmp_path / "cache")).tokenizer
    assert after.fingerprint == before.fingerprint and after.itos == before.itos
    again = make_cfg([*args, f"ckpt_path={folder}"], "resumed")
    with pytest.raises(ConfigError, match=r"trained with another tokenizer"):
        train(again)
    tampered = copy_run(folder, tmp_path / "tampered")
    (tampered / "tokenizer.json").write_text(json.dumps({"kind": "char", "itos": list("tca ")}))
    with pytest.raises(ConfigError, match=r"another tokenizer than the one in"):
        runs.load_run(str(tampered), str(tmp_path / "cache"))


def test_resuming_on_edited_text_that_keeps_the_tokenizer_is_refused(make_cfg, tmp_path):
    """An edit that adds no new character keeps the char tokenizer identical; the checkpoint records the training
    tokens' identity, so the resume is still refused, naming it."""
    text, args, folder = trained_on_a_text_file(make_cfg, tmp_path)
    same = make_cfg([*args, f"ckpt_path={folder}", "trainer.limit_train_batches=7"], "same")
    train(same)  # the same text: resumes
    text.write_text("the mat sat on the cat.\n" * 400)  # the same characters, other tokens
    again = make_cfg([*args, f"ckpt_path={folder}", "trainer.limit_train_batches=8"], "edited")
    with pytest.raises(ConfigError, match=r"trained on other training tokens \(corpus [0-9a-f]{16}"):
        train(again)


# 12. an interrupt saves the work and says so -------------------------------------------------------------

def train_until_interrupted(cfg, monkeypatch, stop_at: str) -> None:
    """Train until StopAt raises the Ctrl-C that ``stop_at`` names ("<step>:interrupt" or "<step>:in_validation")."""
    monkeypatch.setenv("ATTNLAB_TEST_STOP_AT", stop_at)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C while it shuts down


def test_an_interrupt_saves_last_ckpt_records_interrupted_and_resume_continues_in_the_same_folder(make_cfg,
                                                                                                 monkeypatch):
    args = [*FAST, *STOPPABLE, "trainer.limit_train_batches=9", "trainer.log_every_n_steps=1"]  # last.ckpt: every 500
    cfg = make_cfg(args, "2026-01-01_00-00-00")
    train_until_interrupted(cfg, monkeypatch, "4:interrupt")
    folder = Path(cfg.paths.output_dir)
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 4, status
    assert checkpoints.safe_load(folder / "checkpoints" / "last.ckpt")["global_step"] == 4
    monkeypatch.delenv("ATTNLAB_TEST_STOP_AT")
    resumed = make_cfg([*args, "ckpt_path=last"], "2026-01-01_01-00-00")
    train(resumed)
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    assert checkpoints.safe_load(folder / "checkpoints" / "last.ckpt")["global_step"] == 9
    new_folder = folder.parent / "2026-01-01_01-00-00"
    assert not (new_folder / "checkpoints").exists() and not (new_folder / "run.json").exists()
    import csv
    with open(folder / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == sorted(set(steps)) and steps[0] < 4 < steps[-1]  # one log, before and after the resume


def test_ctrl_c_during_a_validation_runs_that_validation_again_on_resume(make_cfg, monkeypatch):
    """The validation after step 4 is interrupted: the resumed run validates step 4 first, so the curve, val/ppl_best
    and the best-checkpoint ranking have it."""
    args = [*FAST, *STOPPABLE, "trainer.limit_train_batches=8", "trainer.val_check_interval=4",
            "trainer.limit_val_batches=3", "trainer.log_every_n_steps=1"]
    cfg = make_cfg(args, "2026-01-01_00-00-00")
    train_until_interrupted(cfg, monkeypatch, "4:in_validation")
    monkeypatch.delenv("ATTNLAB_TEST_STOP_AT")
    train(make_cfg([*args, "ckpt_path=last"], "2026-01-01_01-00-00"))
    import csv
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        validated = [int(r["step"]) + 1 for r in csv.DictReader(f) if r.get("val/ppl")]
    assert validated == [4, 8], validated


@pytest.mark.subprocess
def test_ctrl_c_on_train_py_exits_130_with_one_line(tmp_path):
    env = {**os.environ, "ATTNLAB_TEST_STOP_AT": "3:interrupt", "PYTHONPATH": str(ROOT / "tests")}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST, *STOPPABLE, "paths.outputs_root=outputs"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300, preexec_fn=default_sigint)
    assert r.returncode == 130, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "[attnlab][ERROR] - interrupted" in out, out[-3000:]
    [status] = tmp_path.glob("outputs/**/status.json")
    assert json.loads(status.read_text())["status"] == "interrupted"


# 13. two runs of one config ------------------------------------------------------------------------------

def test_two_runs_of_one_config_resume_the_newest_whole_and_say_which(make_cfg, tmp_path, caplog):
    import logging
    cfg = make_cfg(["ckpt_path=last"], "resuming")
    key, settings = checkpoints.run_key(cfg), checkpoints.settings_of(cfg)
    now = time.time()
    for name, mtimes in (("older", (now - 100, now - 50)), ("newer", (now - 80, now - 70))):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        checkpoints.write_run_file(tmp_path / name, key)
        for f, t in zip(("step000010-val_ppl9.00.ckpt", "last.ckpt"), mtimes):
            torch.save({"state_dict": {}, "global_step": int(t), "attnlab": {"run_key": key, "settings": settings}},
                       tmp_path / name / "checkpoints" / f)
            os.utime(tmp_path / name / "checkpoints" / f, (t, t))
    # the newest single file is older/last.ckpt (now - 50), but the newest run is "older" as a whole: one folder
    with caplog.at_level(logging.WARNING):
        resume = checkpoints.resolve(cfg)
    assert resume.folder == tmp_path / "older" and Path(resume.path).name == "last.ckpt"
    assert "2 runs have this config; resuming the newest, " + str(tmp_path / "older") in caplog.text
    explicit = make_cfg([f"ckpt_path={tmp_path / 'newer'}"], "explicit")
    assert checkpoints.resolve(explicit).folder == tmp_path / "newer"  # a run folder picks that run


# 14. mixed precision with the fused optimizer, and compile, for every type --------------------------------

@pytest.mark.parametrize("name", sorted(__import__("attnlab.attention", fromlist=["ATTENTION_TYPES"]).ATTENTION_TYPES))
def test_every_type_trains_in_bf16_mixed_with_fused_adamw_and_clipping(make_cfg, name):
    cfg = make_cfg([*FAST, f"attention={name}", "trainer=cpu", "trainer.precision=bf16-mixed",
                    "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "model.context=64"])
    assert cfg.optimizer.fused and cfg.trainer.gradient_clip_val
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


# 11. a bad-config job of a sweep still gets its W&B run ---------------------------------------------------

def test_a_sweep_job_with_a_bad_value_gets_a_failed_wandb_run(make_cfg, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(["mode=debug", "logger=wandb", "attention=longformer", "attention.window=0"], "job0")
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    with pytest.raises(ConfigError, match=r"attention.window=0"):
        train(cfg)
    runs_made = list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs_made) == 1
    assert b"attention.window=0 must be in" in runs_made[0].read_bytes()  # the reason, in the run's summary


def test_a_checkpoint_holds_its_settings_once(run_folder):
    state = checkpoints.safe_load(run_folder / "checkpoints" / "last.ckpt")
    assert set(state["attnlab"]["settings"]) == {"model", "attention", "data"}
    assert state["attnlab"]["settings"]["data"] == {"document_mask": False}
    assert state["attnlab"]["settings"]["attention"]["window"] == 8
    assert not {"model", "attention"} & set(state.get("hyper_parameters", {}))  # not a second, unread copy


# found by an adversarial review: the ways around the checks above --------------------------------------------

def _crafted(run_folder, tmp_path, edit) -> Path:
    folder = copy_run(run_folder, tmp_path / "crafted")
    config = folder / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    edit(cfg)
    config.write_text(yaml.safe_dump(cfg))
    return folder


@pytest.mark.parametrize("name,edit", [
    ("resolver named by an interpolation", lambda c: c.update(x="unique_dir") or c["dataset"].update(name="${${x}:PWNED}")),
    ("resolver behind a plain reference", lambda c: c.update(evil="${unique_dir:PWNED}") or c["data"].update(batch_size="${evil}")),
    ("resolver in a top-level key that is read", lambda c: c.update(seed="${oc.env:HOME}")),
])
def test_no_interpolation_in_a_run_folder_reaches_a_resolver(run_folder, tmp_path, monkeypatch, name, edit):
    monkeypatch.chdir(tmp_path)
    folder = _crafted(run_folder, tmp_path, edit)
    with pytest.raises(ConfigError, match=r"run folder .*(resolver|interpolation)"):
        runs.load_run(str(folder), str(tmp_path / "cache"))
    assert not (tmp_path / "PWNED").exists()


def test_yaml_aliases_in_a_run_folder_are_refused_before_they_expand(run_folder, tmp_path):
    folder = copy_run(run_folder, tmp_path / "bomb")
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 items if expanded
    with open(folder / ".hydra" / "config.yaml", "a") as f:
        f.write("\n".join(lines) + "\n")
    started = time.time()
    with pytest.raises(ConfigError, match=r"anchors or aliases"):
        runs.load_run(str(folder), str(tmp_path / "cache"))
    assert time.time() - started < 30


def test_a_crafted_dataset_setting_is_one_line(run_folder, tmp_path):
    folder = _crafted(run_folder, tmp_path, lambda c: c["dataset"].update(val_plays="abc"))
    with pytest.raises(ConfigError, match=r"its config has dataset.val_plays='abc'; it must be an integer"):
        runs.load_run(str(folder), str(tmp_path / "cache"))


def test_a_received_folder_chooses_no_resources_and_its_numbers_keep_the_schemas_ranges(run_folder, tmp_path):
    """data.num_workers: 64 in a folder someone sent starts no worker process (resources come from the command or
    the machine); a seed of 2^128 is refused as a training command line would refuse it."""
    folder = _crafted(run_folder, tmp_path, lambda c: c["data"].update(num_workers=64))
    dm = runs.load_run(str(folder), str(tmp_path / "cache")).datamodule(str(tmp_path / "cache"))
    assert dm.num_workers == 0 and dm.val_dataloader().num_workers == 0
    huge = _crafted(run_folder, tmp_path / "huge", lambda c: c.update(seed=2 ** 128))
    with pytest.raises(ConfigError, match=r"its config has seed=34028236692093846346337460743176821145\d+; it must be"):
        runs.load_run(str(huge), str(tmp_path / "cache"))


def test_the_checksum_covers_every_value_and_cannot_be_dropped(tmp_path):
    io, path = checkpoints.CheckpointIO(), tmp_path / "last.ckpt"
    state = {"state_dict": {"w": torch.ones(3)}, "global_step": 7, "attnlab": {"format": checkpoints.FORMAT},
             "optimizer_states": [{"param_groups": [{"lr": 0.001}]}]}
    io.save_checkpoint(state, path)
    data = path.read_bytes()
    import struct
    lr = struct.pack(">d", 0.001)  # pickle writes a float as a big-endian double
    assert data.count(lr) == 1
    path.write_bytes(data.replace(lr, struct.pack(">d", 5e304)))  # one exponent's worth of flipped bits
    with pytest.raises(checkpoints.CheckpointError, match=r"is damaged \(its contents do not match"):
        checkpoints.safe_load(path)
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)  # the damaged one, digest and all
    loaded.pop(checkpoints.DIGEST_KEY)
    torch.save(loaded, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"its checksum is missing"):
        checkpoints.safe_load(path)


def test_a_checkpoint_without_a_digest_loads_with_a_warning_and_a_bad_format_is_one_line(tmp_path, caplog):
    import logging
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "attnlab": {"format": 1}}, path)  # as before digests
    with caplog.at_level(logging.WARNING):
        checkpoints.safe_load(path)
    assert "carries no checksum" in caplog.text
    for fmt in ("2", 2.5, None, True):
        torch.save({"state_dict": {"w": torch.ones(3)}, "attnlab": {"format": fmt}}, path)
        with pytest.raises(checkpoints.CheckpointError, match=r"its format .* is not a whole number"):
            checkpoints.safe_load(path)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(attnlab=["x"]), r"'attnlab' record is not a mapping"),
    (lambda s: s.update(state_dict=[1, 2]), r"state_dict is not a mapping of names to tensors"),
])
def test_a_checkpoint_of_the_wrong_shape_is_one_line(tmp_path, edit, message):
    state = {"state_dict": {"w": torch.ones(3)}, "attnlab": {}}
    edit(state)
    torch.save(state, tmp_path / "odd.ckpt")
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.safe_load(tmp_path / "odd.ckpt")


def test_a_copy_resumes_its_furthest_checkpoint_whatever_the_file_times(make_cfg, tmp_path):
    cfg = make_cfg(["ckpt_path=last"], "resuming")
    key, settings = checkpoints.run_key(cfg), checkpoints.settings_of(cfg)
    folder = tmp_path / "copied-run"
    (folder / "checkpoints").mkdir(parents=True)
    checkpoints.write_run_file(folder, key)
    for name, step in (("last.ckpt", 30), ("step000024-val_ppl54.76.ckpt", 24)):
        checkpoints.CheckpointIO().save_checkpoint({"state_dict": {}, "global_step": step,
                                                    "attnlab": {"run_key": key, "settings": settings}},
                                                   folder / "checkpoints" / name)
    os.utime(folder / "checkpoints" / "step000024-val_ppl54.76.ckpt")  # copied second: the newer file time
    resume = checkpoints.resolve(cfg)
    assert Path(resume.path).name == "last.ckpt" and resume.state["global_step"] == 30


def test_a_refused_resume_leaves_the_run_folder_as_it_was(make_cfg, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat.\n" * 400)
    args = [*FAST, "dataset=text_files", f"dataset.path={text}", "data.batch_size=4", "trainer.log_every_n_steps=1"]
    first = make_cfg(args, "first")
    train(first)
    folder = Path(first.paths.output_dir)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    text.write_text("QXZ! brand new characters everywhere\n" * 400)
    again = make_cfg([*args, f"ckpt_path={folder}"], "second")
    with pytest.raises(ConfigError, match=r"another tokenizer"):
        train(again)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert json.loads((Path(again.paths.output_dir) / "status.json").read_text())["status"] == "refused"  # nothing trained: report.py skips it


def test_a_resumed_sweep_job_is_in_the_sweep_summary_and_report_skips_its_pointer_folder(make_cfg, monkeypatch):
    from attnlab.report import find_runs
    args = [*FAST, *STOPPABLE, "trainer.limit_train_batches=8", "callbacks.last_checkpoint.every_n_train_steps=2"]
    first = make_cfg(args, "2026-01-01_00-00-00")
    monkeypatch.setenv("ATTNLAB_TEST_STOP_AT", "4:crash")
    with pytest.raises(RuntimeError):
        train(first)
    monkeypatch.delenv("ATTNLAB_TEST_STOP_AT")
    again = make_cfg([*args, "ckpt_path=last"], "2026-01-01_01-00-00")
    train(again)
    pointer = json.loads((Path(first.paths.output_dir).parent / "2026-01-01_01-00-00" / "status.json").read_text())
    assert pointer["status"] == "finished" and pointer["continued_in"] == "../2026-01-01_00-00-00"
    assert find_runs([str(Path(first.paths.output_dir).parent)]) == [Path(first.paths.output_dir)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(__import__("attnlab.attention", fromlist=["ATTENTION_TYPES"]).ATTENTION_TYPES))
def test_every_type_trains_compiled(make_cfg, name):
    cfg = make_cfg([*FAST, f"attention={name}", "compile=true", "trainer.limit_train_batches=2",
                    "trainer.limit_val_batches=1"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


# the rest of the tracebacks and hangs: each one line now ---------------------------------------------------

def test_invalid_utf8_in_a_jsonl_file_is_one_line(tmp_path):
    from attnlab.data import sources
    from attnlab.data.corpus import DataError
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2 is not UTF-8 text"):
        sources.corpus({"source": "jsonl", "path": str(f)}, tmp_path).read()


def test_a_named_pipe_among_text_files_is_skipped_not_read_forever(tmp_path, caplog):
    import logging
    import os
    from attnlab.data.corpus import matching_files
    (tmp_path / "a.txt").write_text("text\n")
    os.mkfifo(tmp_path / "pipe.txt")
    with caplog.at_level(logging.WARNING):
        assert matching_files(str(tmp_path), ".txt") == [str(tmp_path / "a.txt")]
    assert "not regular files" in caplog.text


@pytest.mark.parametrize("overrides, message", [
    (["dataset=copy", "tokenizer=bpe", "tokenizer.vocab_size=300"], "needs one token per character"),
    (["dataset=copy", "dataset.length=100", "model.context=64"], r"dataset.length=100 is longer than model.context=64"),
    (["attention=longformer", "attention.block_size=1000000000"], r"attention.block_size=1000000000 is larger than"),
])
def test_task_and_tile_settings_that_cannot_work_are_one_line(make_cfg, overrides, message):
    from attnlab.data.corpus import DataError
    cfg = make_cfg([*FAST, "dataset.train_examples=200", *overrides] if "dataset=copy" in overrides
                   else [*FAST, *overrides])
    with pytest.raises((ConfigError, DataError), match=message):  # both: one line and exit 2 (cli.USER_ERRORS)
        train(cfg)


# found by the adversarial review of 2026-12-05: siblings of the bounds above --------------------------------

def test_brackets_behind_a_quote_or_hash_cannot_slip_past_the_depth_check(run_folder, tmp_path):
    import time
    for trick in ("x#y", "x'y"):
        folder = copy_run(run_folder, tmp_path / f"deep{len(trick)}{ord(trick[1])}")
        with open(folder / ".hydra" / "config.yaml", "a") as f:
            f.write(f"zz: [{trick}, " + "[" * 20_000 + "]" * 20_000 + "]\n")
        started = time.time()
        with pytest.raises(ConfigError, match=r"nests"):
            runs.load_run(str(folder), str(tmp_path / "cache"))
        assert time.time() - started < 5


def test_a_stride_zero_view_in_a_checkpoint_is_refused_before_it_is_copied(tmp_path):
    path = tmp_path / "bloated.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "attnlab": {"big": torch.zeros(1).expand(2 ** 33)}}, path)
    assert path.stat().st_size < 10_000_000
    with pytest.raises(checkpoints.CheckpointError, match=r"tensor attnlab.big views more elements than the file"):
        checkpoints.safe_load(path)


@pytest.mark.parametrize("name", ["status.json", "run.json"])
def test_received_json_nested_without_end_or_a_pipe_is_unreadable_not_a_traceback_or_a_hang(run_folder, tmp_path,
                                                                                           name):
    import os
    import time
    from attnlab.report import report
    from attnlab.runs import newest_run
    deep = copy_run(run_folder, tmp_path / "deep" / "run")
    (deep / name).write_text("[" * 100_000 + "]" * 100_000)
    piped = copy_run(run_folder, tmp_path / "piped" / "run")
    (piped / name).unlink()
    os.mkfifo(piped / name)
    for root in (tmp_path / "deep", tmp_path / "piped"):
        started = time.time()
        [row], _ = report([str(root)], str(tmp_path / "report"))  # read as damaged: the row stays
        newest_run(root)
        assert time.time() - started < 10


def test_a_token_cache_entry_naming_files_outside_it_is_rebuilt_not_read(tmp_path):
    import json as _json
    from attnlab.data import cache
    from attnlab.data.datamodule import TextDataModule
    dm = TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(tmp_path))
    dm.prepare_data()
    entry = Path(dm.info["cache_entry"])
    meta = _json.loads((entry / "meta.json").read_text())
    meta["files"]["/dev/zero"] = "0" * 64
    (entry / "meta.json").write_text(_json.dumps(meta))
    assert cache.load(entry) is None and not entry.exists()  # damage: removed, rebuilt on the next use


def test_two_hugging_face_folders_of_one_name_keep_their_own_tokenizers(tmp_path):
    """A tokenizer made from vocab.json + merges.txt is cached by the files' contents, not the folder's name."""
    from attnlab import pretrained
    from attnlab.data.tokenizers import load_tokenizer
    made = []
    for i, words in enumerate((["ab", "cd"], ["cd", "ab"])):
        folder = tmp_path / f"h{i}" / "gpt2"
        folder.mkdir(parents=True)
        vocab = {c: k for k, c in enumerate(["a", "b", "c", "d", "<|endoftext|>"])}
        vocab.update({w: 5 + k for k, w in enumerate(words)})
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(w) for w in words) + "\n")
        made.append(load_tokenizer(pretrained.tokenizer_folder(folder, tmp_path / "cache")).encode("abcd"))
    assert made[0] != made[1] and made[0] == [5, 6] and made[1] == [6, 5]
