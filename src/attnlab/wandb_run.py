"""Weights & Biases, owned in one place: online or offline, one run per Hydra job, its name, group, tags,
config, resume id, and finishing it when the job ends.

Online or offline (``logger.wandb.offline: auto``): ``WANDB_MODE`` decides when set (offline / disabled:
no network call at all); otherwise W&B goes online only with an API key for the configured server
(``WANDB_BASE_URL``, self-hosted ones included) and that server answering; else offline, and the folder
to ``wandb sync`` later is printed.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import hydra
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from attnlab.schema import ConfigError

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.wandb.ai"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def server() -> tuple[str, int]:
    url = urlparse(base_url())
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and server()[0] in netrc.read_text(errors="ignore")


def reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection(server(), timeout=timeout).close()
        return True
    except OSError:
        return False


def decide_offline(setting) -> bool:
    """``setting``: true / false / 'auto'. Under ``WANDB_MODE=offline|disabled|dryrun`` no network is touched."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online" or setting is False:
        return False
    if setting is True:
        return True
    return not (has_key() and reachable())


def job_info() -> dict:
    """Multirun or not, the sweep folder, and this job's overrides (its name within the sweep)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return {"multirun": False, "sweep": "", "overrides": "", "job_num": None}
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return {"multirun": multirun, "sweep": Path(hc.sweep.dir).name if multirun else "",
            "overrides": hc.job.override_dirname, "job_num": hc.job.get("num") if multirun else None}


class StepLogger(WandbLogger):
    """Lightning's W&B logger with W&B's own step set to the training step, so one run folder is one W&B run
    with one monotonic step across resumes: a resumed run continues the same run id (from its checkpoint), and
    the steps it trains again after its checkpoint (already in the W&B run, which cannot take rows back) are
    not logged twice: ``floor`` is the highest step logged before the resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.floor = -1

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if step is None:
            return super().log_metrics(metrics, step)
        if step <= self.floor:
            return
        self.experiment.log(dict(metrics, **{"trainer/global_step": step}), step=int(step))


def is_wandb(target: str) -> bool:
    return target.endswith(("WandbLogger", "wandb_run.StepLogger"))


def seed_group(job: dict, attention: str) -> str:
    """The W&B group: the runs that differ only in their seed, so W&B shows a type's seeds as one group (mean and
    spread). In a sweep: ``sweep-<folder>/<its overrides without seed=>``; a single run: its attention type."""
    if not job["multirun"]:
        return attention
    rest = ",".join(o for o in split_overrides(job["overrides"]) if not o.lstrip("+").startswith("seed="))
    return f"sweep-{job['sweep']}/{rest or attention}"


def split_overrides(dirname: str) -> list[str]:
    """Hydra's override_dirname ('a=1,b=x,y' with item_sep ',') back into its overrides: a comma starts a new
    override only where a key= follows."""
    return [o for o in re.split(r",(?=[+~]?[\w.@/]+=)", dirname) if o]


def build_logger(cfg: DictConfig, lg_cfg: dict, resume_id: str | None, floor: int = -1):
    """A WandbLogger for this job: a new run (or the resumed one), never the previous job's."""
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own banner lines; the folder to sync is logged below
    import wandb
    if wandb.run is not None:  # a previous job of this process left its run open: it must not receive our data
        wandb.finish()
    setting = lg_cfg.pop("offline", "auto")
    offline = decide_offline(setting)
    if offline and lg_cfg.get("log_model"):  # W&B cannot upload artifacts offline
        if str(setting).lower() != "auto":
            raise ConfigError("logger.wandb.log_model=true uploads checkpoints, which W&B cannot do with "
                              "logger.wandb.offline=true; set offline=auto or false, or log_model=false")
        log.warning("W&B is offline here: logger.wandb.log_model=true is ignored (the checkpoints stay in the run "
                    "folder; `wandb sync` does not upload them)")
        lg_cfg["log_model"] = False
    job = job_info()
    lg_cfg["offline"] = offline
    lg_cfg["name"] = lg_cfg.get("name") or (cfg.run_name + (f"[{job['overrides']}]" if job["overrides"] else ""))
    lg_cfg["group"] = lg_cfg.get("group") or seed_group(job, cfg.attention.name)
    lg_cfg["job_type"] = cfg.attention.name
    lg_cfg["tags"] = sorted(set(lg_cfg.get("tags") or []) | {cfg.attention.name, cfg.model.name, cfg.dataset.name,
                                                           cfg.get("mode_name", "run")})
    if resume_id:
        lg_cfg["id"], lg_cfg["resume"] = resume_id, "allow"
    Path(lg_cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
    logger = hydra.utils.instantiate(lg_cfg)
    if rank_zero_only.rank != 0:  # under DDP only rank 0 has a run (the others get Lightning's dummy)
        return logger
    run = logger.experiment  # starts the run now: its id goes into checkpoints, its folder is printed
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k != "hydra"}
    run.config.update(resolved, allow_val_change=True)
    if isinstance(logger, StepLogger):
        logger.floor = floor
    if offline:  # every command of the run (a resume, analyze.py) adds an offline folder of the same run id
        log.info("W&B is offline. Upload the whole run later with:  wandb sync %s",
                 Path(run.dir).parent.parent / f"offline-run-*-{run.id}*")
    return logger


def record_failed_job(cfg: DictConfig, reason: str) -> None:
    """A sweep job that failed before training (a bad value, say) gets a W&B run too, marked failed with the
    reason, so the sweep's W&B group shows every job. Single runs are not recorded: the error is on screen."""
    lg = (cfg.get("logger") or {}).get("wandb") if OmegaConf.is_dict(cfg.get("logger")) else None
    if not job_info()["multirun"] or not lg or not is_wandb(str(lg.get("_target_", ""))):
        return
    try:
        import wandb
        settings = OmegaConf.to_container(lg, resolve=True)
        job = job_info()
        Path(settings["save_dir"]).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=settings.get("project"), dir=settings["save_dir"],
                         mode="offline" if decide_offline(settings.get("offline", "auto")) else "online",
                         name=settings.get("name") or f"{cfg.get('run_name', 'run')}[{job['overrides']}]",
                         group=settings.get("group") or f"sweep-{job['sweep']}", reinit=True,
                         config={"overrides": job["overrides"], "job_num": job["job_num"]})
        run.summary.update({"status": "failed", "reason": reason})
        run.finish(exit_code=2)
    except Exception as e:  # W&B itself failing must not hide the job's own error
        log.warning("could not record the failed job in W&B (%s)", e)


def finish(failed: bool = False) -> None:
    """End this job's run (marked failed when the job raised), so the next job of a sweep starts its own."""
    wandb = sys.modules.get("wandb")  # not imported: no run was started (and importing it costs ~0.6 s)
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def run_id(loggers) -> str | None:
    for lg in loggers:
        if isinstance(lg, WandbLogger) and rank_zero_only.rank == 0:
            return lg.experiment.id
    return None


def log_analysis(run, result: dict, pictures: list[Path]) -> None:
    """analyze.py's pictures and tables into the run's own W&B run (resumed by its id), when it has one. The
    project and the offline choice come from the run's config, read as plain values."""
    from attnlab import plain_yaml
    try:
        settings = plain_yaml.lookup(run.cfg, "logger.wandb")
    except plain_yaml.PlainYAMLError:
        settings = {}
    settings = settings if isinstance(settings, dict) else {}
    project = settings.get("project") if isinstance(settings.get("project"), str) else "attnlab"
    offline = settings.get("offline", "auto")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    w = wandb.init(id=run.wandb_id, resume="allow", project=project, dir=str(run.folder),
                   mode="offline" if decide_offline(offline if offline in (True, False, "auto") else "auto") else "online")
    try:
        media = {f"analysis/{p.stem}": wandb.Image(str(p)) for p in pictures}
        heads = wandb.Table(columns=["layer", "head", "entropy", "distance", "global_share"])
        for row in result["layers"]:
            shares = row.get("global_share") or [None] * len(row["entropy"])
            for h, (e, d, g) in enumerate(zip(row["entropy"], row["distance"], shares)):
                heads.add_data(row["layer"], h, e, d, g)
        tables = {"analysis/heads": heads}
        curve = result.get("loss_by_position")
        if curve:
            tables["analysis/loss_by_position"] = wandb.Table(
                columns=["position", "loss", "ci95"], data=[[i, m, c] for i, (m, c) in enumerate(zip(curve["mean"], curve["ci95"]))])
        if result.get("extrapolation"):
            x = result["extrapolation"]
            tables["analysis/extrapolation"] = wandb.Table(columns=["length", "perplexity"],
                                                           data=[list(r) for r in zip(x["lengths"], x["perplexity"])])
        w.log({**media, **tables}, step=run.step)  # at the checkpoint's step: the run's steps stay monotonic
        where = Path(w.dir).parent.parent / f"offline-run-*-{run.wandb_id}*"
        log.info("analysis logged to W&B run %s%s", run.wandb_id,
                 f" (offline; the whole run: wandb sync {where})" if w.settings.mode != "online" else "")
    finally:
        w.finish()
