import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# one token cache for the whole test session (CI points it inside the clone)
os.environ.setdefault("ATTNLAB_CACHE", str(Path(tempfile.gettempdir()) / "attnlab-test-cache"))
os.environ.setdefault("WANDB_MODE", "offline")
try:  # no GPU: run our Triton kernel in Triton's CPU interpreter (must be set before triton.jit runs)
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
os.environ.setdefault("WANDB_SILENT", "true")
try:  # the suite's threads as the commands choose theirs: the cores free at its start (a loaded machine: fewer)
    import torch
    from attnlab import threads as _threads
    torch.set_num_threads(_threads.choose()[0])
except ImportError:
    pass


# The test tiers. `integration`: trains through Lightning, runs a command in a subprocess, or shares a trained
# run; everything else is a unit test (`python -m pytest -m "not integration"`: the fast tier). Marked here from
# what a test uses, or by hand (@pytest.mark.integration); `unit_tests_do_not_train` below fails a unit test
# that trains after all, so the guess is checked on every run.
INTEGRATION_FIXTURES = {"make_cfg", "trained_run", "bad_runs", "run_folder", "runs", "sweep", "trained"}


def default_sigint() -> None:
    """For subprocesses that must see Ctrl-C: a test run started in the background (as CI may start it) has
    SIGINT ignored, and an ignored signal stays ignored across exec."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("slow") or item.get_closest_marker("subprocess") or uses & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)


UNIT_MAX_STEPS = 50  # optimizer steps a unit test may take; a training loop beyond it belongs to the integration tier


@pytest.fixture(autouse=True)
def unit_tests_do_not_train(request):
    """The unit tier stays fast because nothing in it trains: a test there that takes more than UNIT_MAX_STEPS
    optimizer steps (by hand or through Lightning) fails, naming the marker that moves it."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    steps = [0]

    def count(optimizer, args, kwargs):
        steps[0] += 1
    from torch.optim.optimizer import register_optimizer_step_post_hook
    handle = register_optimizer_step_post_hook(count)
    try:
        yield
    finally:
        handle.remove()
    if steps[0] > UNIT_MAX_STEPS:
        pytest.fail(f"this unit test took {steps[0]} optimizer steps (the unit tier allows {UNIT_MAX_STEPS}): it "
                    f"trains, so mark it @pytest.mark.integration", pytrace=False)


def compose(overrides: list[str], output_dir: Path | None = None):
    """The config exactly as `python train.py <overrides>` would see it, with the run folder in output_dir."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    import attnlab.sweep  # noqa: F401  (registers the resolvers the configs use, as every command does)
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.paths.output_dir = str(output_dir)  # literal: later composes must not move this run's folder
            cfg.paths.runs_dir = str(output_dir.parent)
            cfg.paths.outputs_root = str(output_dir.parent)
        output_dir.mkdir(parents=True, exist_ok=True)
        job_cfg = OmegaConf.to_container(cfg, resolve=False)  # as Hydra saves it: unresolved, without hydra
        job_cfg.pop("hydra")
        (output_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(job_cfg), output_dir / ".hydra" / "config.yaml")
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(overrides, name="run"):
        return compose(list(overrides), tmp_path / name)
    return _make


FAST_TRAIN = ["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=6", "test_after_fit=false",
              "callbacks.model_summary=null", "callbacks.attention_picture=null", "callbacks.sample_texts=null",
              "trainer.enable_model_summary=false"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small trained run folder (Longformer, a few steps), shared by the tests that only read it."""
    from attnlab.train import train
    root = tmp_path_factory.mktemp("trained")
    cfg = compose([*FAST_TRAIN, "attention=longformer", "attention.window=8"],
                  root / "outputs" / "lf" / "2026-01-01_00-00-00")
    train(cfg)
    return Path(cfg.paths.output_dir)
