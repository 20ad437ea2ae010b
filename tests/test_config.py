"""Every config option and preset composes; bad values fail with one clear message and a non-zero exit."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from attnlab.attention import ATTENTION_TYPES
from conftest import ROOT, compose

GROUPS = ["model", "attention", "dataset", "tokenizer", "trainer", "mode", "logger", "experiment", "optimizer",
          "hparams_search",
          "callbacks"]


def options(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if option == "text_files":
        overrides.append("dataset.path=/tmp/x.txt")
    cfg = compose(overrides, tmp_path / "run")
    for key in cfg:  # every interpolation resolves (hydra's own node needs a running job)
        if key != "hydra":
            node = cfg[key]
            OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    assert cfg.model.context > 0 and cfg.attention.name


def test_required_groups_have_their_options():
    assert {"tiny", "small", "gpt2"} <= set(options("model"))
    assert {"full", "flash", "sparse", "longformer"} <= set(options("attention"))
    assert {"shakespeare", "tiny_shakespeare", "wikitext2", "wikitext103", "text_files"} <= set(options("dataset"))
    assert {"char", "bpe", "gpt2"} <= set(options("tokenizer"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"debug", "overfit", "run"} <= set(options("mode"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert "exercise" in options("experiment")


def test_debug_mode_is_small_and_deterministic(tmp_path):
    cfg = compose(["mode=debug"], tmp_path / "run")
    assert cfg.model.name == "tiny" and cfg.trainer.limit_train_batches <= 20
    assert cfg.callbacks.best_checkpoint is None  # only last.ckpt: sample.py and evaluate.py work on a debug run
    assert cfg.callbacks.last_checkpoint._target_ == "attnlab.callbacks.LastCheckpoint"
    assert compose(["mode=debug", "model=small"], tmp_path / "r2").model.name == "small"  # the command line wins


def test_paths_come_from_the_run_folder(tmp_path):
    cfg = compose([], tmp_path / "run")
    assert cfg.trainer.default_root_dir == str(tmp_path / "run")
    assert cfg.callbacks.best_checkpoint.dirpath.startswith(str(tmp_path / "run"))


def run_train(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


BAD_CONFIGS = [
    (["attention=longformer", "attention.window=0"], "attention.window=0 must be in [1, 64]"),
    (["attention=sparse", "attention.summary=99"], "attention.summary=99 makes no pattern"),
    (["attention=flash", "attention.backend=warp"], "unknown attention backend 'warp'; valid:"),
    (["attention.name=fancy"], f"unknown attention type 'fancy'; valid: {sorted(ATTENTION_TYPES)}"),
    (["trainer.precision=12"], "trainer.precision=12 must be one of ['16-mixed'"),
    (["model.n_head=5"], "model.d_model=64 is not divisible by model.n_head=5"),
    (["ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt: no such file"),
    (["ckpt_path=last"], "ckpt_path=last: no checkpoint of this run"),
    (["init_from=/nonexistent.ckpt"], "init_from=/nonexistent.ckpt: no such file or folder"),
    pytest.param(["trainer=gpu"], "trainer.accelerator=gpu needs a CUDA GPU and none is visible here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["dataset=text_files", "dataset.path=/nonexistent/x.txt"], "matches no .txt file"),
    (["attention=longformer", "attention.windows=[a,b]"], "attention.windows=['a', 'b'] must be a list of whole numbers"),
    (["attention=longformer", "attention.global_tokens=[0,1.5]"], "attention.global_tokens=[0, 1.5] must be a list"),
    (["data.context=128"], "data.context=128 is longer than model.context=64"),
    (["+optimizer.foo=1"], "optimizer: "),
    (["optimizer._target_=torch.optim.Nope"], "optimizer: "),
    (["init_from=/tmp"], "init_from=/tmp: not a run folder"),
]


@pytest.mark.parametrize("args,message", BAD_CONFIGS)
def test_bad_config_one_clear_message_before_training(args, message, make_cfg):
    from attnlab.errors import UserError
    from attnlab.train import train
    cfg = make_cfg(["mode=debug", *args])
    with pytest.raises(UserError) as e:
        train(cfg)
    assert message in str(e.value)
    assert not list(Path(cfg.paths.output_dir).glob("**/*.ckpt"))


@pytest.mark.subprocess
def test_bad_config_from_the_command_line_exits_2_with_one_line(tmp_path):
    r = run_train("mode=debug", "attention=longformer", "attention.window=0", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-2000:]
    assert "attention.window=0 must be in [1, 64]" in out and "Traceback" not in out


def test_a_corpus_smaller_than_one_batch_is_named_before_training(make_cfg, tmp_path):
    from attnlab.data.corpus import DataError
    from attnlab.train import train
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be: that is the question.\n" * 7)  # ~300 characters
    cfg = make_cfg(["mode=debug", "dataset=text_files", f"dataset.path={small}"])
    with pytest.raises(DataError, match=r"fewer than one batch of data.batch_size=16; lower data.batch_size"):
        train(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_fsdp_without_a_gpu_is_one_line_naming_the_need(make_cfg):
    from attnlab.train import ConfigError, train
    cfg = make_cfg(["mode=debug", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32"])
    with pytest.raises(ConfigError, match=r"^trainer: The strategy `fsdp` requires a GPU accelerator"):
        train(cfg)


def test_fsdp_shards_block_by_block():
    import hydra
    from attnlab.model import Block
    strategy = hydra.utils.instantiate(compose(["trainer=fsdp"]).trainer.strategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert Block in policy._module_classes


# --- presets sized for a CPU and what `python train.py` picks without a GPU --------------------------------

def test_exercise_cpu_is_the_indicator_at_cpu_size(tmp_path):
    cfg = compose(["experiment=exercise_cpu", "attention=longformer"], tmp_path / "run")
    assert (cfg.model.name, cfg.tokenizer.name, cfg.tokenizer.vocab_size) == ("mini", "bpe", 2048)
    assert cfg.trainer.max_epochs == 50 and cfg.dataset.train_plays == 3 and cfg.attention.name == "longformer"
    assert cfg.model.context == cfg.data.context == 128
    gpu = compose(["experiment=exercise"], tmp_path / "gpu")  # the GPU preset is unchanged: the whole corpus
    assert gpu.model.name == "small" and gpu.dataset.train_plays is None and gpu.trainer.max_epochs == 50


def test_shakespeare_cpu_is_nanogpts_cpu_recipe_shape(tmp_path):
    cfg = compose(["experiment=shakespeare_cpu"], tmp_path / "run")
    m = cfg.model
    assert (m.n_layer, m.n_head, m.d_model, m.context, m.dropout) == (4, 4, 128, 64, 0.0)
    assert cfg.tokenizer.name == "char" and cfg.trainer.max_steps == 2500 and cfg.trainer.max_epochs == -1


@pytest.mark.parametrize("argv,cuda,expected", [
    ([], False, "experiment=shakespeare_cpu"),
    (["attention=longformer"], False, "experiment=shakespeare_cpu"),
    (["-m", "attention=full,flash"], False, "experiment=shakespeare_cpu"),
    (["ckpt_path=last"], False, "experiment=shakespeare_cpu"),  # the same command resumes the same run
    ([], True, None),
    (["model=small"], False, None),
    (["model.n_layer=8"], False, None),
    (["experiment=exercise"], False, None),
    (["mode=debug"], False, None),
    (["trainer=cpu"], False, None),
    (["hparams_search=lr_dropout"], False, None),
    (["--help"], False, None),
])
def test_train_py_picks_the_cpu_preset_only_when_nothing_chose_a_size(argv, cuda, expected):
    from attnlab.train import cpu_default_override
    assert cpu_default_override(argv, cuda) == expected


@pytest.mark.subprocess
def test_train_py_says_when_it_runs_the_cpu_preset(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "job"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0
    if torch.cuda.is_available():
        assert "name: small" in r.stdout
    else:
        assert "runs experiment=shakespeare_cpu" in r.stderr and "model=small" in r.stderr
        assert "name: mini" in r.stdout


# -- one source for every default: the dataclasses; the yaml files repeat them and a test keeps them equal --

def _yaml(path):
    import yaml
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", sorted(__import__("attnlab.attention", fromlist=["ATTENTION_TYPES"]).ATTENTION_TYPES))
def test_each_attention_yaml_states_exactly_its_dataclass_defaults(name):
    from dataclasses import MISSING, fields
    from attnlab.attention import ATTENTION_TYPES
    cls = ATTENTION_TYPES[name]
    conf = _yaml(ROOT / "conf" / "attention" / f"{name}.yaml")
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)}
    assert conf.pop("name") == name
    assert set(conf) == set(defaults), f"conf/attention/{name}.yaml lists {sorted(conf)}, the dataclass {sorted(defaults)}"
    differing = {k: (conf[k], defaults[k]) for k in conf if conf[k] != defaults[k]}
    assert not differing, f"conf/attention/{name}.yaml differs from {cls.__name__} (yaml, dataclass): {differing}"


SIZE_KEYS = ("n_layer", "n_head", "d_model", "d_ff", "context", "dropout")  # what a model size chooses


def test_the_default_model_yaml_states_gptconfigs_defaults_and_every_size_lists_every_field():
    from dataclasses import fields
    from attnlab.model import GPTConfig
    defaults = {f.name: f.default for f in fields(GPTConfig) if f.name not in ("vocab_size", "document_end")}  # from the data
    default_model = _yaml(ROOT / "conf" / "config.yaml")["defaults"]
    [size] = [d["model"] for d in default_model if isinstance(d, dict) and "model" in d]
    conf = _yaml(ROOT / "conf" / "model" / f"{size}.yaml")
    shared = {k: v for k, v in defaults.items() if k not in SIZE_KEYS}
    assert {k: conf[k] for k in shared} == shared, f"conf/model/{size}.yaml (the default model) differs from GPTConfig"
    for path in (ROOT / "conf" / "model").glob("*.yaml"):
        assert set(_yaml(path)) - {"name"} == set(defaults), path.name


def test_a_reference_to_a_missing_setting_is_one_line(make_cfg):
    from omegaconf import open_dict
    from attnlab.errors import ConfigError
    from attnlab.spec import RunSpec
    cfg = make_cfg(["mode=debug"])
    with open_dict(cfg):
        cfg.data.batch_size = "${model.nope}"
    with pytest.raises(ConfigError, match=r"the config cannot be resolved: Interpolation key 'model.nope' not found"):
        RunSpec.from_hydra(cfg)
