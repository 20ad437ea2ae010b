"""A finished (or stopped) run, rebuilt from its own folder: its config, checkpoint, tokenizer and model.

``run=`` names a run folder (the one with ``.hydra/config.yaml``; its best checkpoint is used, else
``last.ckpt``), a ``.ckpt`` file inside one, a sweep's job by number (``outputs/multirun/<date>/3``: its
folder's name holds ``=`` and ``,``, which Hydra's command line would need quoted), or ``last`` (the newest run under ``outputs_root`` that has a
checkpoint). Used by ``evaluate.py`` and ``sample.py``: nothing of the training command needs repeating.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path


from attnlab import checkpoints, pretrained, run_folder
from attnlab.attention import build_attention
from attnlab.lit import LitGPT
from attnlab.model import GPTConfig
from attnlab.data.tokenizers import load_tokenizer
from attnlab.run_folder import RunFolder, is_run_folder, one_line
from attnlab.schema import ConfigError, check_fields, rule_for

log = logging.getLogger(__name__)


def checkpoints_of(folder: Path) -> list[Path]:
    """A run folder's checkpoints, newest first (always in ``<run folder>/checkpoints``)."""
    return RunFolder(folder).checkpoints()


def run_status(folder: Path) -> tuple[str, int | None]:
    """(how the run ended, its step) from status.json: 'running or killed' when it has none."""
    return RunFolder(folder).status()


def newest_run(outputs_root: str | Path) -> Path:
    """``run=last``: the newest finished run with a checkpoint; where none has finished, the newest run with a
    checkpoint, saying plainly that it did not finish (it may still be training)."""
    root = Path(str(outputs_root)).expanduser()
    folders = [p.parents[1] for p in root.glob(f"**/{run_folder.CONFIG}")]
    with_ckpt = [(ckpts[0].stat().st_mtime, f) for f in folders if (ckpts := checkpoints_of(f))]
    if not with_ckpt:
        raise ConfigError(f"run=last: no run folder with a checkpoint under {root} (train one first)")
    finished = [(t, f) for t, f in with_ckpt if run_status(f)[0] == "finished"]
    folder = max(finished or with_ckpt)[1]
    status, step = run_status(folder)
    newer = [f for t, f in with_ckpt if t > max(finished)[0]] if finished else []
    if status != "finished":
        log.warning("run=last: no finished run under %s; taking the newest, %s, which is %s (step %s)", root, folder,
                    status, step if step is not None else "?")
    else:
        log.info("run=last: %s (finished at step %s)%s", folder, step,
                 f"; {len(newer)} newer run(s) not finished, e.g. {newer[0]}" if newer else "")
    return folder


def find_run(run: str, outputs_root: str | Path = "outputs") -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``run=`` a folder, a .ckpt file or ``last``."""
    if str(run) == "last":
        run = str(newest_run(outputs_root))
    path = Path(str(run)).expanduser()
    if not path.exists() and path.parent.is_dir():  # a sweep's job by number: <sweep folder>/<n> -> <n>-<overrides>
        jobs = [p for p in path.parent.iterdir() if p.is_dir() and p.name.startswith(f"{path.name}-")]
        path = jobs[0] if len(jobs) == 1 else path
    if not path.exists():
        raise ConfigError(f"run={run}: no such file or folder (give a run folder under outputs/, a .ckpt file, "
                          f"a sweep's job as <sweep folder>/<job number>, or run=last)")
    if path.is_file():
        folder = next((p for p in path.parents if is_run_folder(p)), None)
        if folder is None:
            raise ConfigError(f"run={run}: no run folder (with .hydra/config.yaml) above this checkpoint, so its "
                              f"model and data settings are unknown")
        return folder, path
    if not is_run_folder(path):
        raise ConfigError(f"run={run}: not a run folder (it has no .hydra/config.yaml)")
    ckpts = checkpoints_of(path)
    best = [p for p in ckpts if p.name != "last.ckpt"]  # best_checkpoint's file: ranked by its own validation
    if not ckpts:
        raise ConfigError(f"run={run}: the run folder has no checkpoint (was it stopped before its first one, or "
                          f"run with callbacks.last_checkpoint=null?)")
    return path, (best or ckpts)[0]


@dataclass
class Run:
    folder: Path
    checkpoint: Path
    cfg: dict  # the run's Hydra config, as read (plain values; RunFolder.config): its trainer and logger settings
    model: LitGPT  # weights loaded, on the CPU
    tokenizer: object  # the run's own tokenizer (from its folder)
    settings: dict  # the run's dataset, tokenizer and data settings, checked
    tokenizer_dir: Path | None = None  # where tokenizer.json is (default: the run folder)
    wandb_id: str | None = None  # the run's W&B run id, when it was logged to W&B
    step: int = 0  # the checkpoint's training step (analyze.py logs to W&B there: the run's step stays monotonic)

    def datamodule(self, cache_dir: str, eval_batch_size: int | None = None, dataset: dict | None = None,
                   eval_stride: int | None = None):
        """The run's own splits, or ``dataset`` (a dataset config), encoded with the run's tokenizer (not one
        trained on the text), so the model reads what it was trained to; prepared."""
        from attnlab.data.datamodule import TextDataModule
        s = self.settings
        if dataset is None and s["dataset"] is None:
            raise ConfigError(f"run={self.folder} is a pretrained model without training data of its own: give the "
                              f"text to evaluate on, e.g. dataset=text_files dataset.path=my.txt (or dataset=shakespeare)")
        dm = TextDataModule(dataset=dict(dataset) if dataset is not None else s["dataset"], tokenizer=s["tokenizer"],
                            context=self.model.cfg.context, batch_size=s["batch_size"],
                            eval_batch_size=eval_batch_size or s["eval_batch_size"], num_workers=0,
                            seed=s["seed"], cache_dir=cache_dir, tokenizer_from=str(self.tokenizer_dir or self.folder),
                            loss_on=s.get("loss_on") or "auto", eval_stride=eval_stride)
        dm.prepare_data()
        unk = getattr(dm.tokenizer, "unk_id", None)
        for split, tokens in dm.tokens.items():
            n_unk = int((tokens == unk).sum()) if unk is not None else 0
            if n_unk:
                log.warning("%s split: %d of %d tokens (%.2f%%) are characters the run's tokenizer never saw "
                            "(<unk>)", split, n_unk, len(tokens), 100 * n_unk / len(tokens))
        return dm


def run_tokenizer(folder: Path, settings: dict, cache_dir: str):
    """The run's tokenizer: ``tokenizer.json`` in its folder; runs from before it was saved there get it from
    their corpus once (and it is saved into the folder, so the corpus is not needed again)."""
    if (folder / run_folder.TOKENIZER).is_file():
        try:
            return load_tokenizer(folder)
        except Exception as e:
            raise ConfigError(f"run folder {folder}: tokenizer.json cannot be read ({one_line(e)})") from None
    from attnlab.data.datamodule import TextDataModule
    log.warning("run folder %s has no tokenizer.json (a run from before runs kept their tokenizer): rebuilding it "
                "from the training corpus and saving it there", folder)
    dm = TextDataModule(dataset=settings["dataset"], tokenizer=settings["tokenizer"], context=2, batch_size=1,
                        cache_dir=cache_dir, seed=settings["seed"])
    dm.prepare_data()
    dm.tokenizer.save(folder)
    return dm.tokenizer


def load_pretrained(run: str, cache_dir: str) -> Run:
    """``run=hf:<hub id>`` or a Hugging Face GPT-2 folder: the pretrained model itself, full attention."""
    folder = pretrained.fetch(run, cache_dir, what="run")
    model_cfg = {**pretrained.model_settings(folder, what="run"), "dropout": 0.0}
    tokenizer_dir = pretrained.tokenizer_folder(folder, cache_dir)
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except Exception as e:
        raise ConfigError(f"run={run}: its tokenizer cannot be read ({one_line(e)})") from None
    if tokenizer.vocab_size != model_cfg["vocab_size"]:  # as init_from= checks: ids must mean the model's tokens
        raise ConfigError(f"run={run}: its tokenizer has {tokenizer.vocab_size:,} tokens, its config.json "
                          f"vocab_size={model_cfg['vocab_size']:,}; the folder's tokenizer is not the model's")
    model = LitGPT(GPTConfig(**model_cfg), build_attention({"name": "full"}))
    pretrained.load_into(model.model, folder, run, what="run")
    weights = next(folder / w for w in pretrained.WEIGHT_FILES if (folder / w).is_file())
    settings = {"dataset": None, "tokenizer": {"name": "pretrained"}, "batch_size": 8, "eval_batch_size": None,
                "seed": 0}
    return Run(folder, weights, {}, model, tokenizer, settings, tokenizer_dir)


def load_run(run: str, cache_dir: str, outputs_root: str | Path = "outputs") -> Run:
    """The run, its weights and its tokenizer, from its folder alone (no corpus, no token cache needed); or a
    pretrained Hugging Face GPT-2 (``hf:<id>`` or its folder)."""
    if pretrained.is_source(run):
        return load_pretrained(str(run), cache_dir)
    folder, ckpt = find_run(run, outputs_root)
    record = RunFolder(folder)
    recorded_settings = record.settings()  # plain values, checked for code (run_folder.py)
    try:
        state = checkpoints.safe_load(ckpt)
    except checkpoints.CheckpointError as e:
        raise ConfigError(str(e)) from e
    bad = checkpoints.non_finite_weights(state["state_dict"])
    if bad:
        raise ConfigError(f"run={run}: checkpoint {ckpt} holds NaN or inf weights ({len(bad)} tensors, first {bad[0]}): "
                          f"the run diverged; use an earlier checkpoint of it (run=<file>.ckpt)")
    model_cfg = {k: v for k, v in recorded_settings["model"].items() if k != "name"}
    attention_cfg = recorded_settings["attention"]
    settings = {"dataset": recorded_settings["dataset"], "tokenizer": recorded_settings["tokenizer"],
                "seed": recorded_settings.get("seed", 0)}  # (a config without one: seed 0)
    data = recorded_settings["data"]
    settings.update(batch_size=data.get("batch_size"), eval_batch_size=data.get("eval_batch_size"),
                    loss_on=data.get("loss_on") or "auto",  # (runs before 2026-12-03 had no loss_on: all targets)
                    document_mask=data.get("document_mask", False))  # (and before 2026-12-05 no document_mask)
    for key, value in (("seed", settings["seed"]), *((f"data.{k}", settings[k]) for k in
                                                     ("batch_size", "eval_batch_size", "loss_on", "document_mask"))):
        rule = rule_for(key)  # the training command line's own rules (schema.RULES)
        if rule.problem(value):
            raise ConfigError(f"run folder {folder}: its config has {key}={value!r}; it must be {rule.allowed()}")
    for group in ("dataset", "tokenizer"):  # the same rules as a training command line
        for k, v in settings[group].items():
            rule = rule_for(f"{group}.{k}")
            if rule is not None and rule.problem(v):
                raise ConfigError(f"run folder {folder}: its config has {group}.{k}={v!r}; it must be {rule.allowed()}")
    def folder_says(build):  # a recorded setting the model refuses: named with the folder it came from
        try:
            return build()
        except ConfigError as e:
            raise ConfigError(f"run folder {folder}: {one_line(e)}") from None
    folder_says(lambda: check_fields(GPTConfig, model_cfg, "model"))
    attention = folder_says(lambda: build_attention(attention_cfg))
    tokenizer = run_tokenizer(folder, settings, cache_dir)
    recorded = (state.get("attnlab") or {}).get("settings") or {}  # the checkpoint's one copy of its settings
    diff = checkpoints.differing_keys(recorded, {"model": recorded_settings["model"], "attention": attention_cfg,
                                                 "data": {"document_mask": settings["document_mask"]}})
    if recorded and diff:
        raise ConfigError(f"run={run}: checkpoint {ckpt.name} was trained with other settings than {folder}'s "
                          f"config says ({', '.join(diff)}); the folder was altered or the file belongs elsewhere")
    saved = state.get("attnlab", {}).get("tokenizer")
    if saved and saved != tokenizer.fingerprint:
        raise ConfigError(f"run={run}: checkpoint {ckpt.name} was trained with another tokenizer than the one in "
                          f"{folder} (fingerprints {saved} and {tokenizer.fingerprint}); the folder was altered")
    document_end = tokenizer.eos_id if settings["document_mask"] else None
    model = LitGPT(folder_says(lambda: GPTConfig(**{**model_cfg, "vocab_size": tokenizer.vocab_size,
                                                    "document_end": document_end})), attention)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"run={run}: checkpoint {ckpt} does not fit the model and tokenizer of its run's config "
                          f"({str(e).splitlines()[-1].strip()[:200]})") from e
    wandb_id = (state.get("attnlab") or {}).get("wandb_run_id")
    wandb_id = wandb_id if isinstance(wandb_id, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", wandb_id) else None
    step = state.get("global_step")
    return Run(folder, ckpt, record.config(), model, tokenizer, settings, wandb_id=wandb_id,
               step=step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0)

