"""A sweep side by side, offline: python report.py outputs/multirun/<date> [more run folders or globs]

Writes report.md, report.csv, val_ppl.png (validation perplexity against step and training time) and
cost.png (tokens/s and peak memory per run), train_val.png (training against validation perplexity) and
each run's latest sample into the first folder given (or --out), and prints the table.

The same as ``attnlab report ...``: the command is ``attnlab.report.main``.
"""
from attnlab.report import main

if __name__ == "__main__":
    main()
