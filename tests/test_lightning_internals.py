"""The Lightning internals attnlab reaches into (``attnlab.lightning_internals``, the one place that touches them):
each must still exist in the installed Lightning, so an upgrade that moves one fails here, by name, instead of
deep inside a resumed run or a multi-process launch."""
import lightning

from attnlab import lightning_internals


def test_every_lightning_internal_attnlab_uses_is_there():
    assert lightning_internals.check_internals() == []


def test_the_check_names_an_internal_lightning_moved(monkeypatch):
    from lightning.pytorch.strategies.launchers import subprocess_script
    monkeypatch.delattr(subprocess_script, "_hydra_subprocess_cmd")
    assert lightning_internals.check_internals() == ["lightning.pytorch.strategies.launchers.subprocess_script"
                                                     "._hydra_subprocess_cmd"]


def test_lightning_is_the_major_version_the_pin_allows():
    major = int(lightning.__version__.split(".")[0])
    assert major == 2, f"attnlab pins lightning<3 (pyproject.toml); {lightning.__version__} is installed"


def test_the_ddp_launch_hook_reaches_both_launcher_modules():
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher
    before = (fabric_launcher._hydra_subprocess_cmd, trainer_launcher._hydra_subprocess_cmd)
    marker = lambda *a, **k: None  # noqa: E731
    try:
        lightning_internals.launch_children_with(marker)
        assert fabric_launcher._hydra_subprocess_cmd is marker and trainer_launcher._hydra_subprocess_cmd is marker
    finally:
        fabric_launcher._hydra_subprocess_cmd, trainer_launcher._hydra_subprocess_cmd = before
