"""Look inside a trained model's attention: python analyze.py run=<run folder, .ckpt or last> [prompt=...]

Examples:
    python analyze.py run=last                           # maps, per-head statistics, loss by position (val split)
    python analyze.py run=outputs/multirun/<date>/3 prompt="ROMEO: What light"

The same as ``attnlab analyze ...``: the command is ``attnlab.analyze.main``.
"""
from attnlab.analyze import main

if __name__ == "__main__":
    main()
