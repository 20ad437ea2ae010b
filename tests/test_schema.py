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
    from attnlab.train import build_model_parts
    cfg = copy.deepcopy(COMPOSED[option])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    build_model_parts(cfg)


def bad_values(key: str) -> list:
    rule = schema.rule_for(key)
    if rule is not None:
        return rule.bad_examples()
    return ["two", -1, True]  # model.* and attention.*: not a number, below every range, a bool


CASES = [(option, key, bad) for option, key in NUMERIC for bad in bad_values(key)]


@pytest.mark.parametrize("option,key,bad", CASES, ids=[f"{k}={b!r}" for _, k, b in CASES])
def test_a_bad_numeric_value_stops_with_one_line_naming_it(option, key, bad):
    with pytest.raises(ValueError) as e:
        build(option, key, bad)
    message = str(e.value)
    assert key in message and "\n" not in message, message


@pytest.mark.parametrize("option,key", NUMERIC, ids=[k for _, k in NUMERIC])
def test_the_shipped_value_passes(option, key):
    build(option, key, OmegaConf.select(COMPOSED[option], key))


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
    from attnlab.train import build_model_parts
    with pytest.raises(schema.ConfigError, match=r"^dataset.path is required and not set"):
        build_model_parts(compose(["dataset=text_files"]))


def test_every_attention_setting_is_typed_by_its_dataclass():
    for name, cls in ATTENTION_TYPES.items():
        with pytest.raises(schema.ConfigError, match=r"attention.block_size='big' must be an integer"):
            from attnlab.attention import build_attention
            build_attention({"name": name, "block_size": "big"})
