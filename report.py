"""A sweep side by side, offline: python report.py outputs/multirun/<date> [more run folders or globs]

Writes report.md, report.csv, val_ppl.png (validation perplexity against step and training time) and
cost.png (tokens/s and peak memory per run), train_val.png (training against validation perplexity) and
each run's latest sample into the first folder given (or --out), and prints the table.
"""
import argparse
from attnlab.cli import run_plain
from attnlab.report import report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="a sweep folder, run folders or globs")
    ap.add_argument("--out", help="where to write the report (default: the first folder given)")
    args = ap.parse_args()
    runs, files = run_plain("report.py", lambda: report(args.paths, args.out))
    print(files["markdown"].read_text())
    print("\n".join(f"{kind}: {path}" for kind, path in files.items()))


if __name__ == "__main__":
    main()
