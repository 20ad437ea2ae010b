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

from attnlab.data.corpus import DataError
from attnlab.train import ConfigError, train

log = logging.getLogger("attnlab")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        sys.exit(2)
    return metrics.get("val/ppl")  # for Hydra sweepers that optimise a value


if __name__ == "__main__":
    main()
