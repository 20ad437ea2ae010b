"""The config's schema: every numeric setting has a type and a range, checked before anything runs.

Two sources, one per kind of setting, never two for the same key:
* ``model.*`` and ``attention.*`` are typed by their dataclasses (``GPTConfig`` and each attention type):
  ``check_fields`` checks a value against the field's annotation; the ranges are the dataclasses' own
  (``GPTConfig.__post_init__``, ``AttentionType.validate``).
* every other numeric setting has a rule in ``RULES`` (``callbacks.*.x`` patterns match any callback).

A bad value gives one line naming the setting, the value and what is allowed (``ConfigError``, exit code 2).
``tests/test_config.py`` composes every option of every group and fails if a numeric setting has no rule.
"""
from __future__ import annotations

import fnmatch
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from attnlab.errors import ConfigError  # (re-exported: callers name it from here)


@dataclass(frozen=True)
class Number:
    """An int or float setting within [low, high] (open ends where said), maybe null, maybe special values."""
    kind: type = int
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    special: tuple = ()  # values allowed outside the range, e.g. -1 for "no limit"
    meaning: str = ""  # what null / the special values mean
    count_or_fraction: bool = False  # Lightning's limit_*: a fraction in (0, 1] or a whole number of batches

    def allowed(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.count_or_fraction:
            what = "a fraction in (0, 1] or a whole number of batches >= 1"
        elif self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {_fmt(self.low)}"
        elif self.high is not None:
            what += f" {'<' if self.high_open else '<='} {_fmt(self.high)}"
        extra = [str(v) for v in self.special] + (["null"] if self.nullable else [])
        if extra:
            what += f", or {' or '.join(extra)}"
        return what + (f" ({self.meaning})" if self.meaning else "")

    def problem(self, value: Any) -> bool:
        """True when the value breaks the rule."""
        if value is None:
            return not self.nullable
        if value in self.special and not isinstance(value, bool):
            return False
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        if self.kind is int and not isinstance(value, int):
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return True
        if self.count_or_fraction:
            return not (0 < value <= 1 or (value >= 1 and float(value).is_integer()))
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return True
        return self.high is not None and (value > self.high or (self.high_open and value == self.high))


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values (compared as text: precision 32 and '32' are the same)."""
    values: tuple
    nullable: bool = False

    def allowed(self) -> str:
        return f"one of {sorted(self.values)}" + (", or null" if self.nullable else "")

    def problem(self, value: Any) -> bool:
        return not (value is None and self.nullable) and str(value) not in self.values


@dataclass(frozen=True)
class Flag:
    """true or false, nothing else (Hydra passes ``use_cache=maybe`` as the string 'maybe', which is truthy)."""

    def allowed(self) -> str:
        return "true or false"

    def problem(self, value: Any) -> bool:
        return not isinstance(value, bool)


@dataclass(frozen=True)
class Text:
    """A non-empty string (a path, a run, a prompt file)."""
    meaning: str = ""
    nullable: bool = False

    def allowed(self) -> str:
        return "a non-empty string" + (", or null" if self.nullable else "") + (f" ({self.meaning})" if self.meaning else "")

    def problem(self, value: Any) -> bool:
        if value is None:
            return not self.nullable
        return not isinstance(value, str) or not value.strip()


def check_rules(cfg, rules: dict) -> None:
    """A command's own settings (sample.py, evaluate.py) against its rules: the first bad one raises."""
    for key, rule in rules.items():
        if key in cfg.keys() and OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required and not set; give it on the command line, e.g. {key}=...")
        value = cfg.get(key)
        if rule.problem(value):
            raise ConfigError(f"{key}={value!r} must be {rule.allowed()}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


COUNT = Number(int, low=1)
STEPS_PER_LOG = Number(int, low=1)
SEED = Number(int, low=0, high=2 ** 32 - 1)

RULES: dict[str, Number | Choice] = {
    "seed": SEED,
    "validate_first": Flag(),
    "threads": Number(int, low=1, nullable=True, meaning="null: the cores free when the command starts"),
    "data.batch_size": COUNT,
    "data.eval_batch_size": Number(int, low=1, nullable=True, meaning="null: data.batch_size"),
    "data.context": COUNT,
    "data.num_workers": Number(int, low=0),
    "data.overfit_batches": Number(int, low=0, meaning="0: off"),
    "data.verify": Flag(),
    "data.document_mask": Flag(),
    "data.loss_on": Choice(("auto", "all", "answers")),
    "dataset.vocab_size": Number(int, low=4, high=20992),
    "dataset.power_a": Number(float, low=0, high=1, low_open=True),
    "dataset.random_fillers": Flag(),
    "dataset.digits": Number(int, low=1, high=20),
    "data.seed": SEED,
    "dataset.split_seed": SEED,
    "dataset.val_fraction": Number(float, low=0, high=1, low_open=True, high_open=True),
    "dataset.test_fraction": Number(float, low=0, high=1, low_open=True, high_open=True),
    "dataset.val_plays": COUNT,
    "dataset.test_plays": COUNT,
    "dataset.train_plays": Number(int, low=1, nullable=True, meaning="null: every play not held out"),
    "dataset.seed": SEED,
    "dataset.pairs": COUNT,
    "dataset.*_examples": COUNT,
    "dataset.*_rows": COUNT,
    "tokenizer.vocab_size": Number(int, low=258, nullable=True,
                                   meaning="byte-level BPE needs its 256 bytes, an end token and one merge"),
    "tokenizer.train_bytes": Number(int, low=1, nullable=True, meaning="null: the whole training split"),
    "optimizer.lr": Number(float, low=0, low_open=True),
    "optimizer.weight_decay": Number(float, low=0),
    "optimizer.eps": Number(float, low=0, low_open=True),
    "optimizer.betas.*": Number(float, low=0, high=1, high_open=True),
    "scheduler.warmup_steps": Number(int, low=0),
    "scheduler.min_lr_ratio": Number(float, low=0, high=1),
    "scheduler.total_steps": Number(int, low=1, nullable=True, meaning="null: the trainer's number of steps"),
    "trainer.max_epochs": Number(int, low=1, special=(-1,), meaning="-1: until trainer.max_steps"),
    "trainer.max_steps": Number(int, low=1, special=(-1,), meaning="-1: trainer.max_epochs decides"),
    "trainer.gradient_clip_val": Number(float, low=0, low_open=True, nullable=True, meaning="null: no clipping"),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.log_every_n_steps": STEPS_PER_LOG,
    "trainer.val_check_interval": Number(float, count_or_fraction=True),
    "trainer.check_val_every_n_epoch": Number(int, low=1, nullable=True),
    "trainer.limit_train_batches": Number(float, count_or_fraction=True, nullable=True, meaning="null: all"),
    "trainer.limit_val_batches": Number(float, low=0, nullable=True,
                                        meaning="0 skips validation; a fraction in (0, 1] or a number of batches"),
    "trainer.limit_test_batches": Number(float, count_or_fraction=True, nullable=True, meaning="null: all"),
    "trainer.num_nodes": COUNT,
    "trainer.precision": Choice(("32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64", "64-true")),
    "trainer.devices": Number(int, low=1, special=(-1, "auto"), meaning="-1 / auto: all of the node's devices"),
    "callbacks.*.log_every_n_steps": STEPS_PER_LOG,
    "callbacks.*.every_n_train_steps": COUNT,
    "callbacks.*.every_n_minutes": Number(float, low=0, low_open=True, nullable=True, meaning="null: by steps only"),
    "callbacks.*.save_top_k": Number(int, low=-1, meaning="-1: keep every checkpoint"),
    "callbacks.*.max_depth": Number(int, low=-1, meaning="-1: all layers"),
    "callbacks.*.num_prompts": COUNT,
    "callbacks.*.windows": COUNT,
    "callbacks.*.new_tokens": COUNT,
    "callbacks.*.examples": COUNT,
}
TYPED_BY_DATACLASS = ("model.", "attention.")  # their dataclasses hold the types (check_fields)


# --- the other commands' own settings (sample, evaluate, analyze, export): the same rule types, one table -----

RUN = Text(meaning="a run folder, a .ckpt file, <sweep folder>/<job number>, or last")
DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("val", "test")
COMMAND_RULES: dict[str, dict] = {
    "sample": {
        "run": RUN,
        "prompt_file": Text(nullable=True, meaning="a UTF-8 text file, or null to use prompt="),
        "escapes": Flag(),
        "use_cache": Flag(),
        "max_new_tokens": Number(int, low=1, high=1_000_000, meaning="at most a million: hours of CPU, a GB of text"),
        "num_samples": Number(int, low=1),
        "temperature": Number(float, low=1e-3, meaning="top_k=1 is greedy; below 0.001 the scaled logits overflow"),
        "top_k": Number(int, low=1, nullable=True, meaning="null: no cut"),
        "seed": SEED,
        "device": Choice(DEVICES),
        "threads": RULES["threads"],
    },
    "evaluate": {
        "run": RUN,
        "split": Choice(SPLITS),
        "batch_size": Number(int, low=1, nullable=True, meaning="null: the run's evaluation batch size"),
        "limit_batches": Number(float, count_or_fraction=True, nullable=True, meaning="null: the whole split"),
        "stride": Number(int, low=1, nullable=True, meaning="null: the context (windows side by side)"),
        "threads": RULES["threads"],
    },
    "analyze": {
        "run": Text(meaning="a run folder, a .ckpt file, <sweep folder>/<job number>, last, or a pretrained model"),
        "split": Choice(SPLITS),
        "tokens": Number(int, low=2, meaning="the length of the text whose attention is drawn"),
        "max_windows": Number(int, low=1),
        "prompt": Text(nullable=True, meaning="null: the start of the split"),
        "wandb": Flag(),
        "threads": RULES["threads"],
    },
    "export": {
        "run": RUN,
        "out": Text(meaning="the folder to write the Hugging Face model into"),
        "threads": RULES["threads"],
    },
}


def check_command(name: str, cfg) -> None:
    """A command's own settings against ``COMMAND_RULES[name]``: the first bad one raises ConfigError."""
    check_rules(cfg, COMMAND_RULES[name])


def rule_for(key: str) -> Number | Choice | None:
    return next((rule for pattern, rule in RULES.items() if fnmatch.fnmatchcase(key, pattern)), None)


def leaves(cfg: DictConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf set in the config itself (not Hydra's node, not interpolations); a
    mandatory value left unset raises."""
    out = []
    for k in cfg.keys():
        key = f"{prefix}{k}"
        if (not prefix and k == "hydra") or OmegaConf.is_interpolation(cfg, k):
            continue  # an interpolated value is checked where it is set (data.context at model.context)
        if OmegaConf.is_missing(cfg, k):
            raise ConfigError(f"{key} is required and not set (??? in its config); give it on the command line, "
                              f"e.g. {key}=...")
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and not node._is_none():
            out += leaves(cfg[k], key + ".")
        elif isinstance(node, ListConfig) and not node._is_none():
            out += [(f"{key}.{i}", v) for i, v in enumerate(cfg[k])]
        else:
            out.append((key, cfg[k]))
    return out


def check(cfg: DictConfig) -> None:
    """Every ruled setting of the composed config; the first bad one raises ConfigError."""
    for key, value in leaves(cfg):
        rule = rule_for(key)
        if rule is not None and rule.problem(value):
            raise ConfigError(f"{key}={value!r} must be {rule.allowed()}")


# --- dataclass-typed settings (model, attention) ------------------------------------------------------------

def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple, ListConfig)) and all(fits(v, args[0]) for v in value) if args \
            else isinstance(value, (list, tuple, ListConfig))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def check_fields(cls: type, values: dict, prefix: str) -> None:
    """Each value against its dataclass field's annotation; unknown keys list the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{prefix}.{key} is not a setting of {cls.__name__}; valid: {sorted(names)}")
        if not fits(value, hints[key]):
            raise ConfigError(f"{prefix}.{key}={value!r} must be {describe(hints[key])}")
