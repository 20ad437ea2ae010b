"""RunSpec: one typed, resolved description of a run, built once at the start of ``train`` and passed down.

``RunSpec.from_hydra(cfg)`` checks every setting once (``schema``), resolves ``init_from`` once (scratch, a
checkpoint file, a run folder, or a Hugging Face folder / hub id: nanoGPT's if/elif, in ``InitFrom.resolve``),
merges a pretrained model's shape, and records which backend ``auto`` chose on this device. Everything after it
(the data module, the model, the run folder's record) is built from the spec, not from the config.

The Hydra config stays the source of the *execution* parts it instantiates (trainer, callbacks, loggers, the
optimizer: ``_target_`` configs of this project), as in lightning-hydra-template.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError

log = logging.getLogger(__name__)

DATA_KEYS = ("context", "batch_size", "eval_batch_size", "num_workers", "seed", "cache_dir", "overfit_batches", "verify",
             "loss_on", "document_mask")  # the ``data`` settings the data module takes (plain values: its class is always ours)


@dataclass(frozen=True)
class InitFrom:
    """Where the weights start. ``kind``: scratch (random), checkpoint (a .ckpt of this project, given as the
    file or as its run folder) or hugging_face (a GPT-2 folder or ``hf:<hub id>``, fetched once)."""
    kind: str = "scratch"
    source: str = ""  # as given (messages, names); "" from scratch
    path: Path | None = None  # the checkpoint file, or the Hugging Face folder on disk

    @classmethod
    def resolve(cls, value: Any, cache_dir: str, outputs_root: str = "outputs") -> "InitFrom":
        from attnlab import pretrained
        source = str(value or "")
        if not source:
            return cls()
        if pretrained.is_source(source):
            return cls("hugging_face", source, pretrained.fetch(source, cache_dir))
        path = Path(source).expanduser()
        if path.is_dir():  # a run folder of this project: its best checkpoint (as sample.py's run= takes it)
            from attnlab.runs import find_run
            try:
                _, ckpt = find_run(source, outputs_root)
            except ConfigError as e:  # its message names run=: here the setting is init_from
                raise ConfigError(str(e).replace(f"run={source}", f"init_from={source}", 1)) from None
            return cls("checkpoint", source, ckpt)
        if path.is_file():
            return cls("checkpoint", source, path)
        raise ConfigError(f"init_from={source}: no such file or folder (give a .ckpt file, a run folder, a Hugging "
                          f"Face GPT-2 folder or hf:<hub id>)")

    def record(self) -> dict:
        """Plain values, no absolute path: what the run folder says its weights started from."""
        return {"kind": self.kind, "source": self.source}


@dataclass(frozen=True)
class DataSpec:
    """The data module's settings: the dataset (its source's settings), the tokenizer, and how windows are cut."""
    dataset: dict
    tokenizer: dict
    context: int
    batch_size: int
    cache_dir: str
    eval_batch_size: int | None = None  # None: batch_size
    num_workers: int = 0  # loader processes: the command's choice, never a received folder's
    seed: int = 0  # the order of the training windows
    overfit_batches: int = 0  # 0: off; n: the same n batches every epoch (a debugging run)
    verify: bool = False  # re-hash cached token arrays on load
    loss_on: str = "auto"  # all | answers | auto (answers where the dataset marks them)
    document_mask: bool = False  # attention within documents only (the model's document_end: the tokenizer's eos)
    tokenizer_from: str | None = None  # a folder whose tokenizer.json encodes the text (a pretrained model's)

    def build(self):
        """The LightningDataModule (not yet prepared)."""
        from attnlab.data.datamodule import TextDataModule
        return TextDataModule(**asdict(self))


@dataclass(frozen=True)
class RunSpec:
    """What a run trains and where, resolved. ``model`` holds GPTConfig's fields but vocab_size (the data's
    tokenizer gives it); ``attention`` the attention type's settings."""
    model: dict
    attention: dict
    data: DataSpec
    seed: int
    init: InitFrom
    device: str  # cpu | cuda: where it trains
    backend: str  # the backend the attention type computes with on that device (``auto`` resolved)
    run_key: str  # what ckpt_path=last matches (checkpoints.run_key)
    output_dir: Path
    names: dict = field(default_factory=dict)  # run_name, model, tokenizer: what reports and W&B call it
    optimizer: dict = field(default_factory=dict)  # the optimizer's config (a _target_ partial of this project's)
    scheduler: dict = field(default_factory=dict)  # warmup_steps, min_lr_ratio, total_steps
    ckpt_path: str | None = None  # resume: last, a run folder or a .ckpt (checkpoints.resolve)
    checkpoint_model: dict = field(default_factory=dict)  # the model settings as checkpoints record them (name too)
    compile: bool = False
    validate_first: bool = False  # score the starting weights before training (start/val_ppl)
    test_after_fit: bool = True
    threads: int | None = None  # None: the cores free when the command starts

    def gpt_config(self, vocab_size: int, document_end: int | None = None):
        """The model's config; the vocabulary and the end-of-document token (data.document_mask) come from the
        data's tokenizer."""
        from attnlab.model import GPTConfig
        return GPTConfig(**{**self.model, "vocab_size": vocab_size, "document_end": document_end})

    def attention_type(self):
        """A fresh attention type of these settings (each model owns its own: backends cache plans on it)."""
        from attnlab.attention import build_attention
        return build_attention(self.attention)

    def record(self) -> dict:
        """Plain values for the run folder's record (run.json ``spec``): nothing absolute, nothing executable."""
        data = {k: v for k, v in asdict(self.data).items() if k not in ("cache_dir", "tokenizer_from")}
        return {"model": dict(self.model), "attention": dict(self.attention), "data": data, "seed": self.seed,
                "init": self.init.record(), "device": self.device, "backend": self.backend, "names": dict(self.names)}

    # -- from a Hydra config ---------------------------------------------------------------------------------
    @classmethod
    def from_hydra(cls, cfg) -> "RunSpec":
        """Check the composed config, resolve init_from and the device, and build the description. Raises
        ConfigError (one line) for any bad setting, before any data is read."""
        from omegaconf.errors import OmegaConfBaseException
        try:
            return cls._from_hydra(cfg)
        except OmegaConfBaseException as e:  # e.g. a reference to a setting that does not exist
            raise ConfigError(f"the config cannot be resolved: {str(e).strip().splitlines()[0]}") from None

    @classmethod
    def _from_hydra(cls, cfg) -> "RunSpec":
        from omegaconf import OmegaConf
        from attnlab import checkpoints, pretrained, schema, sweep
        from attnlab.model import GPTConfig
        schema.check(cfg)
        plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
        model = {k: v for k, v in plain(cfg.model).items() if k != "name"}
        schema.check_fields(GPTConfig, model, "model")
        if "document_end" in model:
            raise ConfigError("model.document_end is set from the tokenizer; use data.document_mask=true")
        init = InitFrom.resolve(cfg.get("init_from"), cfg.paths.cache_dir, cfg.paths.outputs_root)
        names = {"run_name": str(cfg.get("run_name") or "run"), "model": str(cfg.model.get("name")),
                 "tokenizer": str(cfg.tokenizer.get("name")), "dataset": str(cfg.dataset.get("name")),
                 "attention": str(cfg.attention.get("name"))}
        tokenizer_from = None
        if init.kind == "hugging_face":  # the checkpoint decides the model's shape, and reads with its tokenizer
            model = pretrained.merge_settings(model, pretrained.model_settings(init.path),
                                              given_settings(cfg, "model"), init.source)
            name = sweep.pretrained_name(init.source, names["model"])
            names.update(model=name, tokenizer=f"pretrained-{name}")
            tokenizer_from = str(pretrained.tokenizer_folder(init.path, cfg.paths.cache_dir))
            from omegaconf import open_dict
            with open_dict(cfg):  # the composed config says what runs: its run key, W&B config, checkpoints
                cfg.model.update(model)
                cfg.model["name"], cfg.tokenizer["name"] = name, names["tokenizer"]
        checked = GPTConfig(**{**model, "vocab_size": 1})  # dimension checks; the vocabulary comes from the data
        attention_settings = plain(cfg.attention)
        from attnlab.attention import build_attention
        attention = build_attention(attention_settings)
        device = run_device(str(cfg.trainer.accelerator))
        score_mod = checked.score_mod_name  # the backend must be able to add it
        attention.check(model["context"], model["n_head"], device, score_mod)
        data = plain(cfg.data)
        if data.get("context", model["context"]) > model["context"]:
            raise ConfigError(f"data.context={data['context']} is longer than model.context={model['context']}: "
                              f"windows must fit the model's positions (data.context follows model.context unless set)")
        check_optimizer(plain(cfg.optimizer))
        from attnlab.data.sources import settings_of
        settings_of(plain(cfg.dataset))  # the source's typed settings: an unknown or mistyped key before any data
        data_spec = DataSpec(dataset=plain(cfg.dataset), tokenizer=plain(cfg.tokenizer),
                             tokenizer_from=tokenizer_from, **{k: data[k] for k in DATA_KEYS if k in data})
        return cls(model=model, attention=attention_settings, data=data_spec, seed=int(cfg.seed), init=init,
                   device=device, backend=attention.resolved_backend(device, score_mod is not None), run_key=checkpoints.run_key(cfg),
                   output_dir=Path(str(cfg.paths.output_dir)), names=names, compile=bool(cfg.get("compile")),
                   validate_first=bool(cfg.get("validate_first")), test_after_fit=bool(cfg.get("test_after_fit")),
                   threads=cfg.get("threads"), optimizer=plain(cfg.optimizer), scheduler=plain(cfg.scheduler),
                   ckpt_path=None if cfg.get("ckpt_path") is None else str(cfg.ckpt_path),
                   checkpoint_model=plain(cfg.model))

    def moved_to(self, folder: Path) -> "RunSpec":
        """The same run writing into ``folder`` (a resumed run goes on in its own run folder)."""
        from dataclasses import replace
        return replace(self, output_dir=Path(folder))


def check_optimizer(settings: dict) -> None:
    """The optimizer config builds an optimizer: an unknown class or setting is one line now, not a traceback from
    inside the first training step."""
    import hydra
    import torch
    from hydra.errors import InstantiationException
    try:
        hydra.utils.instantiate(settings)([torch.zeros(1, requires_grad=True)])
    except (InstantiationException, TypeError, ValueError) as e:
        cause = e.__cause__ or e
        raise ConfigError(f"optimizer: {str(cause).strip().splitlines()[0]}") from None


def run_device(accelerator: str) -> str:
    """cpu or cuda for ``trainer.accelerator``; a GPU asked for where none is visible is one line."""
    import torch
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible here; "
                          f"use trainer=default (picks the device) or trainer=cpu")
    return "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"


def given_settings(cfg, group: str) -> dict:
    """The ``group.key`` settings chosen for this run beyond the group's own file: on the command line or by an
    experiment preset (e.g. experiment=finetune_cpu's model.context). Their composed values."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    keys = {o.split("=", 1)[0].lstrip("+~").removeprefix(f"{group}.") for o in hc.overrides.task
            if o.lstrip("+~").startswith(f"{group}.")}
    choice = hc.runtime.choices.get(group)
    own = Path(__file__).resolve().parent / "conf" / group / f"{choice}.yaml"  # the package's own file
    if choice and own.is_file():
        defaults = OmegaConf.load(own)  # read as Hydra reads it (1e-5 is a number there, a string to PyYAML)
        keys |= {k for k in cfg[group] if k in defaults and cfg[group][k] != defaults[k]}
    return {k: cfg[group][k] for k in keys if k in cfg[group]}
