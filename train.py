"""Train a Transformer language model: python train.py [group=option ...] [key=value ...]

Examples:
    python train.py mode=debug                        # tiny model, a few batches, < 1 minute on a CPU
    python train.py attention=longformer              # the real run with Longformer attention (on a machine
                                                      # without a GPU: experiment=shakespeare_cpu, ~12 min)
    python train.py -m attention=full,flash,sparse,longformer mode=debug   # a sweep, one job each
"""
import logging
import sys

import hydra
from omegaconf import DictConfig

from attnlab.callbacks import TrainingDiverged
from attnlab.cli import run_task
from attnlab.train import cpu_default_override, train

log = logging.getLogger("attnlab")


def train_or_stop(cfg: DictConfig) -> dict:
    try:
        return train(cfg)
    except TrainingDiverged as e:  # its message says what happened and what to try: one line, exit 1
        from attnlab.sweep import is_multirun
        if is_multirun():
            raise
        log.error("%s", e)
        sys.exit(1)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train_or_stop, cfg, records_status=True)  # train() writes the run's status.json itself
    if metrics is None:
        return None
    return metrics.get(cfg.get("optimized_metric") or "val/ppl")  # for a sweeper (hparams_search=...) to minimise


if __name__ == "__main__":
    import torch
    cpu_default = cpu_default_override(sys.argv[1:], torch.cuda.is_available())
    if cpu_default:  # recorded in the run's .hydra/overrides.yaml like any override
        print(f"attnlab: no GPU here and no model size chosen, so this runs {cpu_default} (about 12 minutes on "
              f"2 CPU cores); `python train.py model=small` runs the full-size default (hours on a CPU)",
              file=sys.stderr)
        sys.argv.append(cpu_default)
    main()
