"""The run folder: the one module that knows its file names, writes and reads its record, and upgrades old ones.

A run folder (``outputs/<run name>/<date>`` or a sweep's ``<n>-<overrides>``) holds::

    .hydra/config.yaml     Hydra's composed config (what the command line asked for)
    .hydra/overrides.yaml  the command line's overrides
    run.json               the run's record: its run key and its spec (what ran: the model's real shape, the
                           attention settings, the data, the backend auto chose), tokenizer fingerprint, versions
    status.json            how it ended (finished, failed, interrupted, refused) and its step, wall time, scores
    tokenizer.json         its tokenizer: sampling and evaluating need no corpus
    checkpoints/*.ckpt     its checkpoints (always here: nothing records where the folder is)
    csv/metrics.csv        the logged metrics
    train.log              the command's log
    samples.jsonl, task_accuracy.json, analysis/analysis.json   what callbacks and analyze.py add

Nothing in it is an absolute path, so a folder moved or copied elsewhere still resumes, samples and evaluates.
Everything read from it is plain values (``plain_yaml``); nothing it says is passed to ``instantiate``.

Older folders: runs before 2026-12-05 kept no spec in run.json; their settings come from ``.hydra/config.yaml``
(``settings``, the one upgrade path), which such runs rewrote with the pretrained shape after ``init_from``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from attnlab import plain_yaml
from attnlab.errors import ConfigError

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
RECORD = "run.json"
STATUS = "status.json"
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"
METRICS = Path("csv") / "metrics.csv"
LOG = "train.log"  # the training command's log (Hydra names it after the job)
SAMPLES = "samples.jsonl"  # callbacks.SampleTexts: continuations of fixed prompts after each validation
TASK_ACCURACY = "task_accuracy.json"  # callbacks.TaskAccuracy: a synthetic task's last scores
ANALYSIS = Path("analysis") / "analysis.json"  # analyze.py's results (its maps beside it)
SECTIONS = ("model", "attention", "dataset", "tokenizer", "data")  # all a run folder's settings give
CODE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")  # what instantiate would obey
LEGACY_DATA_TARGET = "attnlab.data.datamodule.TextDataModule"  # written into data: by runs of before 2026-11-28
RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")  # ${name:...}: a resolver, i.e. code, not a value


def is_run_folder(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- the files ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def record_file(self) -> Path:
        return self.path / RECORD

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    # -- the record (run.json) ---------------------------------------------------------------------------
    def record(self) -> dict:
        """run.json as plain values ({} when missing or unreadable)."""
        try:
            info = plain_yaml.load_json(self.record_file)
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def write_record(self, **facts) -> None:
        """Add ``facts`` to run.json (written whole, then renamed into place)."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.record_file.with_name(f".{RECORD}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({**self.record(), **facts}, indent=1, default=str))
        os.replace(tmp, self.record_file)

    # -- the settings ---------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The run's settings as plain values: ``model``, ``attention``, ``dataset``, ``tokenizer``, ``data`` and
        ``seed``. From the spec in run.json (runs from 2026-12-05 on), else from ``.hydra/config.yaml``. Any
        instantiation key or resolver call in them is refused in one line: a run folder someone sent you must not
        choose what is called."""
        spec = self.record().get("spec")
        if isinstance(spec, dict):
            data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
            out = {"model": spec.get("model"), "attention": spec.get("attention"), "dataset": data.get("dataset"),
                   "tokenizer": data.get("tokenizer"),
                   "data": {k: v for k, v in data.items() if k not in ("dataset", "tokenizer")}, "seed": spec.get("seed")}
            self._refuse_code(out, RECORD)
            return out
        cfg = self.config()
        self._refuse_code(cfg, str(CONFIG))
        return self._config_settings(cfg)

    def _refuse_code(self, settings: dict, where: str) -> None:
        for section in SECTIONS:
            if not isinstance(settings.get(section), dict):
                raise ConfigError(f"run folder {self.path}: {where} has no {section} settings")
            for path, key, value in _walk(settings[section], section):
                if key in CODE_KEYS and not (path == "data._target_" and value == LEGACY_DATA_TARGET):
                    raise ConfigError(f"run folder {self.path}: its config sets {path}={value!r}; a run folder's config "
                                      f"is read as plain values and never chooses what code runs, so it is refused")
                if isinstance(value, str) and RESOLVER_CALL.search(value):
                    raise ConfigError(f"run folder {self.path}: its config sets {path}={value!r}, a resolver call; a "
                                      f"run folder's config is read as plain values, so it is refused")

    def config(self) -> dict:
        """``.hydra/config.yaml`` as plain values (no tags, no aliases, no resolvers): what the command asked for."""
        try:
            cfg = plain_yaml.load(self.config_file)
        except (OSError, UnicodeDecodeError, plain_yaml.PlainYAMLError) as e:
            raise ConfigError(f"run folder {self.path}: {CONFIG.name} cannot be read ({one_line(e)})") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"run folder {self.path}: {CONFIG} is not a mapping of settings")
        return cfg

    def config_as_ran(self) -> dict:
        """``.hydra/config.yaml`` with what the run really had in place of what was asked: the spec's model
        (a pretrained model's shape) and names (run.json, runs from 2026-12-05 on). Older runs rewrote their
        config.yaml with the same values, so theirs is read as it is."""
        cfg = self.config()
        spec = self.record().get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("model"), dict) and isinstance(cfg.get("model"), dict):
            names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
            cfg["model"] = {**cfg["model"], **spec["model"], **({"name": names["model"]} if "model" in names else {})}
            if isinstance(cfg.get("tokenizer"), dict) and "tokenizer" in names:
                cfg["tokenizer"] = {**cfg["tokenizer"], "name": names["tokenizer"]}
        return cfg

    def _config_settings(self, cfg: dict) -> dict:
        """Runs before 2026-12-05: the settings from ``.hydra/config.yaml`` (plain references followed)."""
        out = {section: self._plain(cfg, section) for section in ("model", "attention", "dataset", "tokenizer")}
        out["dataset"] = self._known_dataset_keys(out["dataset"])
        out["data"] = {}
        for key in ("seed", "data.batch_size", "data.eval_batch_size", "data.loss_on"):
            try:
                plain_yaml.lookup(cfg, key)
            except plain_yaml.PlainYAMLError:
                continue  # missing: the reader's default (or its one-line refusal)
            value = self._plain(cfg, key)
            if key == "seed":
                out["seed"] = value
            else:
                out["data"][key.split(".", 1)[1]] = value
        return out

    def _known_dataset_keys(self, dataset):
        """An older config's dataset settings without the keys its source never read (e.g. experiment=nanogpt_cpu
        set val_fraction on the plays until 2026-12-05): they changed nothing then and are dropped, said once."""
        from attnlab.data import sources
        from attnlab.errors import UserError
        if not isinstance(dataset, dict):
            return dataset
        try:
            cls = sources._module(dataset.get("source")).Settings
        except UserError:
            return dataset  # an unknown source: refused in one line where the data is read
        if hasattr(cls, "from_dataset"):
            return dataset  # the source reads its settings itself (synthetic: its own LEGACY keys)
        known = set(sources.setting_names(dataset["source"])) | set(sources.COMMON)
        unread = sorted(set(dataset) - known)
        if unread:
            import logging
            logging.getLogger(__name__).warning("run folder %s: its dataset settings %s were never read by the %s "
                                                "source; ignored", self.path, unread, dataset.get("source"))
        return {k: v for k, v in dataset.items() if k in known}

    def _plain(self, cfg: dict, key: str):
        """The value of ``key`` (dotted) with plain references followed; anything else is refused in one line."""
        try:
            return plain_yaml.resolve(plain_yaml.lookup(cfg, key), cfg, key)
        except plain_yaml.PlainYAMLError as e:
            raise ConfigError(f"run folder {self.path}: setting {key} in its config cannot be read as a plain value "
                              f"({one_line(e)})") from None

    # -- checkpoints and status ------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Its checkpoints, furthest trained first (by the step inside; see ``checkpoints.checkpoints_in``)."""
        from attnlab.checkpoints import checkpoints_in
        return checkpoints_in(self.path)

    def status(self) -> tuple[str, int | None]:
        """(how the run ended, its step) from status.json: 'running or killed' when it has none."""
        try:
            s = plain_yaml.load_json(self.status_file)
        except (OSError, ValueError):
            return "running or killed (no status.json)", None
        if not isinstance(s, dict) or not isinstance(s.get("status"), str):
            return "unknown (status.json unreadable)", None
        return s["status"][:40], s.get("step") if isinstance(s.get("step"), int) else None


def _walk(node, where: str):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{where}.{k}", k, v
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield f"{where}[{i}]", None, v
            yield from _walk(v, f"{where}[{i}]")


def one_line(e: BaseException) -> str:
    """An exception's first line, at most 300 characters (its type where it has no message)."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
