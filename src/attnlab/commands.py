"""``attnlab <command> [overrides ...]``: the project's commands, from any folder, after ``pip install attnlab``.

    attnlab train mode=debug            (= python train.py mode=debug in a checkout)
    attnlab sample run=last prompt=ROMEO:
    attnlab evaluate run=last split=test
    attnlab report outputs/multirun/<date>

Each command is the ``main`` of its module in this package (``attnlab.train.main`` ...); the configs ship inside
the package (``attnlab/conf``), so an installed wheel needs no checkout. Outputs go under the current folder
(``outputs/``). The checkout's root scripts (``train.py`` ...) call the same functions.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = ("train", "sample", "evaluate", "analyze", "export", "report")
CONFIG_PATH = "pkg://attnlab.conf"  # Hydra's search path for every command: the package's own configs


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "nothing"
        print(f"attnlab: the command must be one of {list(COMMANDS)}, got {given}; e.g. attnlab train mode=debug",
              file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    sys.argv = [f"attnlab {command}", *rest]  # Hydra and argparse read the overrides from sys.argv
    importlib.import_module(f"attnlab.{command}").main()
