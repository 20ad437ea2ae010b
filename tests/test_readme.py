"""The README says only what is true: its bad-input table is run here, row by row, as a CPU user would type it
(so the README cannot drift from the messages again)."""
import re
from pathlib import Path

import pytest

from attnlab.cli import USER_ERRORS
from attnlab.train import cpu_default_override, train
from conftest import ROOT, compose


def bad_input_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- bad-input-table -->")[1].split("<!-- /bad-input-table -->")[0]
    rows = [re.match(r"\| `(.+?)` \| `(.+)` \|$", line) for line in table.strip().splitlines()[2:]]
    assert rows and all(rows), "the README's bad-input table is not in the expected form"
    return [(m.group(1), m.group(2)) for m in rows]


@pytest.mark.parametrize("command_line,message", bad_input_rows())
def test_the_readmes_bad_input_table_is_what_a_cpu_user_sees(tmp_path, command_line, message):
    overrides = command_line.split()
    cpu_default = cpu_default_override(overrides, cuda_available=False)  # what train.py adds without a GPU
    cfg = compose(overrides + ([cpu_default] if cpu_default else []), tmp_path / "run")
    with pytest.raises(USER_ERRORS) as error:
        train(cfg)
    assert str(error.value) == message
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # stopped before training
