"""Every command gives torch the cores that are free when it starts (threads= overrides), and says so."""
import logging
import subprocess
import sys
import time

import pytest

from attnlab import threads


@pytest.mark.parametrize("cores, others, expected", [(2, 0, 2), (2, 1, 1), (2, 2, 1), (2, 6, 1), (8, 2.4, 6),
                                                     (8, 0.4, 8)])
def test_the_free_cores_are_chosen(cores, others, expected):
    assert threads.choose(None, cores=cores, others=others)[0] == expected


def test_a_given_number_wins():
    n, why = threads.choose(3, cores=2, others=2)
    assert n == 3 and why.startswith("threads=3 given")


def test_other_running_processes_are_counted():
    idle = threads.running_elsewhere()
    spin = "import time\nt = time.time()\nwhile time.time() - t < 3: pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        time.sleep(0.5)
        loaded = threads.running_elsewhere(samples=7)
    finally:
        for p in busy:
            p.kill()
    assert loaded >= idle + 1.5  # the two spinning processes are running
    assert threads.choose(None, cores=threads.usable_cores(), others=loaded)[0] <= max(1, threads.usable_cores() - 1)


def test_a_command_says_how_many_threads_it_uses(caplog):
    import torch
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="attnlab.threads"):
            n = threads.apply(1)
        assert n == 1 == torch.get_num_threads()
        assert "torch uses 1 CPU thread: threads=1 given" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_a_bad_threads_value_is_one_line():
    from attnlab.cli import checked_threads
    from attnlab.schema import ConfigError
    assert checked_threads(None) is None and checked_threads(2) == 2
    with pytest.raises(ConfigError, match=r"threads='two' must be"):
        checked_threads("two")
