"""Look inside a trained model's attention: python analyze.py run=<run folder, .ckpt or last> [prompt=...]

Examples:
    python analyze.py run=last                           # maps, per-head statistics, loss by position (val split)
    python analyze.py run=outputs/multirun/<date>/3 prompt="ROMEO: What light"
"""
import hydra
from omegaconf import DictConfig

from attnlab.analyze import analyze
from attnlab.cli import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    run_task(analyze, cfg)


if __name__ == "__main__":
    main()
