"""``attnlab <command> [overrides ...]``: the project's four commands from any folder, after ``pip install -e .``.

    attnlab train mode=debug            = python train.py mode=debug
    attnlab sample run=last prompt=ROMEO:
    attnlab evaluate run=last split=test
    attnlab report outputs/multirun/<date>

Outputs go under the current folder (``outputs/``), as with the scripts. The commands are the scripts beside
``conf/`` in the checkout this package was installed from (an editable install).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

COMMANDS = ("train", "sample", "evaluate", "analyze", "export", "report")
CHECKOUT = Path(__file__).resolve().parents[2]  # src/attnlab/commands.py -> the checkout


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "nothing"
        print(f"attnlab: the command must be one of {list(COMMANDS)}, got {given}; e.g. attnlab train mode=debug",
              file=sys.stderr)
        sys.exit(2)
    script = CHECKOUT / f"{argv[0]}.py"
    if not script.is_file() or not (CHECKOUT / "conf").is_dir():
        print(f"attnlab: {script} and its conf/ folder are not there; install attnlab from a checkout with "
              f"pip install -e <checkout>", file=sys.stderr)
        sys.exit(2)
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
