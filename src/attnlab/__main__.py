"""``python -m attnlab <command> ...``: the same as the ``attnlab`` command."""
from attnlab.commands import main

main()
