"""Train a Transformer language model: python train.py [group=option ...] [key=value ...]

Examples:
    python train.py mode=debug                        # tiny model, a few batches, < 1 minute on a CPU
    python train.py attention=longformer              # the real run with Longformer attention
    python train.py -m attention=full,flash,sparse,longformer mode=debug   # a sweep, one job each
"""
import logging
import sys

import hydra
from omegaconf import DictConfig

from attnlab.callbacks import TrainingDiverged
from attnlab.data.corpus import DataError
from attnlab.sweep import is_multirun, one_line
from attnlab.train import ConfigError, train

log = logging.getLogger("attnlab")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except (ConfigError, DataError) as e:
        if is_multirun():  # recorded in the job's status.json; the sweep goes on and reports it at the end
            log.error("job failed: %s", e)
            return None
        log.error("%s", e)
        sys.exit(2)
    except Exception as e:  # out of memory, a diverged loss, a bug: one job's failure does not end a sweep
        if not is_multirun():
            if isinstance(e, TrainingDiverged):  # its message says what happened and what to try
                log.error("%s", e)
                sys.exit(1)
            raise
        log.exception("job failed: %s", one_line(e))
        return None
    return metrics.get(cfg.get("optimized_metric") or "val/ppl")  # for a sweeper (hparams_search=...) to minimise


if __name__ == "__main__":
    main()
