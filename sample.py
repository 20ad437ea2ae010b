"""Sample text from a trained run: python sample.py run=<run folder, .ckpt or last> [prompt=...] [key=value ...]

Examples:
    python sample.py run=last prompt="ROMEO:" num_samples=3 max_new_tokens=300
    python sample.py run=outputs/longformer-small-shakespeare-char/<date> temperature=0.7 top_k=50
    python sample.py -m run=last temperature=0.5,0.8,1.2      # one job per temperature

The same as ``attnlab sample ...``: the command is ``attnlab.sample.main``.
"""
from attnlab.sample import main

if __name__ == "__main__":
    main()
