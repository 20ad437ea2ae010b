"""Evaluate a trained checkpoint on a split: python evaluate.py run=<run folder or .ckpt> [split=test|val]

Examples:
    python evaluate.py run=outputs/full-small-shakespeare-char/2026-11-25_10-00-00
    python evaluate.py run=path/to/last.ckpt split=val trainer=ddp_cpu   # two processes, the same numbers
"""
import logging
import sys

import hydra
from omegaconf import DictConfig

from attnlab.data.corpus import DataError
from attnlab.evaluate import evaluate
from attnlab.schema import ConfigError

log = logging.getLogger("attnlab")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    try:
        return evaluate(cfg)["loss"]
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
