"""A run as a Hugging Face GPT-2 folder: python export.py run=<run folder, .ckpt or last> out=<folder>

Only runs Hugging Face's GPT-2 computes as they are (full or flash attention, learned positions, GPT-2's
shape); others are refused in one line naming what GPT-2 cannot represent.
"""
import hydra
from omegaconf import DictConfig

from attnlab.cli import run_task
from attnlab.export import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export, cfg)


if __name__ == "__main__":
    main()
