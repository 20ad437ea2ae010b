"""Sample text from a trained run: python sample.py run=<run folder, .ckpt or last> [prompt=...] [key=value ...]

Examples:
    python sample.py run=last prompt="ROMEO:" num_samples=3 max_new_tokens=300
    python sample.py run=outputs/longformer-small-shakespeare-char/<date> temperature=0.7 top_k=50
    python sample.py -m run=last temperature=0.5,0.8,1.2      # one job per temperature
"""
import hydra
from omegaconf import DictConfig

from attnlab.cli import run_task
from attnlab.sample import sample


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    run_task(sample, cfg)


if __name__ == "__main__":
    main()
