"""Evaluate a trained checkpoint on a split: python evaluate.py run=<run folder or .ckpt> [split=test|val]

Examples:
    python evaluate.py run=outputs/full-small-shakespeare-char/2026-11-25_10-00-00
    python evaluate.py run=path/to/last.ckpt split=val trainer=ddp_cpu   # two processes, the same numbers
"""
import hydra
from omegaconf import DictConfig

from attnlab.cli import run_task
from attnlab.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    result = run_task(evaluate, cfg)
    return None if result is None else result["loss"]


if __name__ == "__main__":
    main()
