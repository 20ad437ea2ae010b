"""Evaluate a trained checkpoint on a split: python evaluate.py run=<run folder or .ckpt> [split=test|val]

Examples:
    python evaluate.py run=outputs/full-small-shakespeare-char/2026-11-25_10-00-00
    python evaluate.py run=path/to/last.ckpt split=val trainer=ddp_cpu   # two processes, the same numbers

The same as ``attnlab evaluate ...``: the command is ``attnlab.evaluate.main``.
"""
from attnlab.evaluate import main

if __name__ == "__main__":
    main()
