"""The config schema, table-driven: every numeric setting of every option of every config group has a type and
a range, and each bad value stops the run before training with one line naming the setting and the value."""
import copy

import pytest
from omegaconf import OmegaConf, open_dict

from attnlab import schema
from attnlab.attention import ATTENTION_TYPES
from conftest import ROOT, compose

GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra")
NEEDS = {"text_files": ["dataset.path=/tmp/x.txt"], "jsonl": ["dataset.path=/tmp/x.jsonl"]}  # a mandatory value the option leaves to the command line


def every_option():
    """One composed config per option of every group: the settings any run can have."""
    for group in GROUPS:
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
            yield f"{group}={option}", compose([f"{group}={option}", *NEEDS.get(option, [])])


COMPOSED = dict(every_option())


def numeric_leaves():
    """(option it appears in, dotted key) of every int/float setting, each key once."""
    seen = {}
    for option, cfg in COMPOSED.items():
        for key, value in schema.leaves(cfg):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                seen.setdefault(key, option)
    return sorted((option, key) for key, option in seen.items())


NUMERIC = numeric_leaves()


def test_every_numeric_setting_of_every_option_has_a_rule():
    unruled = [key for _, key in NUMERIC
               if schema.rule_for(key) is None and not key.startswith(schema.TYPED_BY_DATACLASS)]
    assert not unruled, f"numeric settings with no rule in attnlab.schema.RULES: {unruled}"
    assert len(NUMERIC) > 40  # the walk found the config's settings, not nothing


def build(option: str, key: str, value):
    """The run's checks, before any data is read, with one setting replaced."""
    from attnlab.spec import RunSpec
    cfg = copy.deepcopy(COMPOSED[option])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    RunSpec.from_hydra(cfg)


def test_every_shipped_value_passes_its_rule():
    """Every numeric value the shipped options set passes the checks (a rule too tight for a preset fails here,
    naming each key), one run of the checks per (option, key)."""
    refused = []
    for option, key in NUMERIC:
        try:
            build(option, key, OmegaConf.select(COMPOSED[option], key))
        except ValueError as e:
            refused.append(f"{option} {key}: {e}")
    assert not refused, refused


@pytest.mark.parametrize("key,value,allowed", [
    ("optimizer.lr", -1, "must be a number > 0"),
    ("optimizer.lr", "fast", "must be a number > 0"),
    ("model.n_layer", "two", "must be an integer"),
    ("trainer.max_epochs", 0, "must be an integer >= 1, or -1"),
    ("trainer.limit_train_batches", 0, "must be a fraction in (0, 1] or a whole number of batches"),
    ("attention.window", "abc", "must be an integer"),
    ("trainer.devices", "auto", None),  # allowed
    ("trainer.max_epochs", -1, None),  # allowed: max_steps decides
])
def test_messages_say_what_is_allowed(key, value, allowed):
    option = "attention=longformer"
    if allowed is None:
        build(option, key, value)
        return
    with pytest.raises(ValueError) as e:
        build(option, key, value)
    assert str(e.value).startswith(f"{key}={value!r} {allowed}"), str(e.value)


def test_a_mandatory_value_left_unset_is_named():
    from attnlab.spec import RunSpec
    with pytest.raises(schema.ConfigError, match=r"^dataset.path is required and not set"):
        RunSpec.from_hydra(compose(["dataset=text_files"]))


def test_every_attention_setting_is_typed_by_its_dataclass():
    for name, cls in ATTENTION_TYPES.items():
        with pytest.raises(schema.ConfigError, match=r"attention.block_size='big' must be an integer"):
            from attnlab.attention import build_attention
            build_attention({"name": name, "block_size": "big"})


# Wrong values written by hand, one per setting, not taken from the rules: a rule that is too loose fails here.
HAND_WRITTEN = [
    ("data.batch_size=0", "data.batch_size=0 must be"),
    ("data.eval_batch_size=-1", "data.eval_batch_size=-1 must be"),
    ("data.num_workers=-2", "data.num_workers=-2 must be"),
    ("scheduler.warmup_steps=-5", "scheduler.warmup_steps=-5 must be"),
    ("scheduler.min_lr_ratio=1.5", "scheduler.min_lr_ratio=1.5 must be"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas.1=1.0 must be"),
    ("optimizer.eps=0", "optimizer.eps=0 must be"),
    ("trainer.gradient_clip_val=0", "trainer.gradient_clip_val=0 must be"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be"),
    ("trainer.precision=8", "trainer.precision=8 must be one of"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0 must be"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 must be"),
    ("callbacks.last_checkpoint.every_n_minutes=0", "callbacks.last_checkpoint.every_n_minutes=0 must be"),
    ("callbacks.best_checkpoint.save_top_k=-2", "callbacks.best_checkpoint.save_top_k=-2 must be"),
    ("model.context=0", "model.context=0 must be >= 1"),
    ("model.dropout=1.0", "model.dropout=1.0 must be in [0, 1)"),
    ("model.positions=sinusoidal", "model.positions='sinusoidal'"),
    ("model.bias=maybe", "model.bias='maybe' must be true or false"),
    ("attention=sparse attention.stride=0", "attention.stride=0"),
    ("attention=sparse attention.pattern_kind=diagonal", "attention.pattern_kind='diagonal'"),
    ("attention=bigbird attention.random_blocks=-1", "attention.random_blocks"),
    ("attention=longformer attention.dilation=0", "attention.dilation"),
    ("attention=longformer attention.block_size=0", "attention.block_size must be >= 1, got 0"),
    ("attention=full attention.backend=quantum", "'quantum'"),
    ("tokenizer=bpe tokenizer.vocab_size=2.5", "tokenizer.vocab_size=2.5 must be"),
    ("threads=0", "threads=0 must be"),
    ("seed=1.5", "seed=1.5 must be"),
    ("dataset.val_plays=-1", "dataset.val_plays=-1 must be"),
]


@pytest.mark.parametrize("override,message", HAND_WRITTEN, ids=[o for o, _ in HAND_WRITTEN])
def test_a_hand_written_wrong_value_is_refused_in_one_line(override, message):
    from attnlab.spec import RunSpec
    cfg = compose(override.split())
    with pytest.raises(schema.ConfigError) as error:
        RunSpec.from_hydra(cfg)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
