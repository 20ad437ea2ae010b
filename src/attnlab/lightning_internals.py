"""The Lightning internals this project reaches into, in one place (Lightning 2.x; each is covered by a test that
fails when Lightning changes it: see the callers' tests)."""
from __future__ import annotations


def validate_now(trainer) -> None:
    """Run the fit loop's validation now, as its training loop does after a scheduled step (trainer state,
    logging and callbacks included: the scores count for ``val/ppl_best`` and the best checkpoint). Called from
    ``on_train_start`` to redo a validation that an interrupt cut short. (``trainer.validate`` would not do:
    it runs outside fit, where the best checkpoint and ``val/ppl_best`` ignore it.)"""
    epoch_loop = trainer.fit_loop.epoch_loop  # Lightning's _TrainingEpochLoop
    first_loop_iter = trainer._logger_connector._first_loop_iter
    trainer.validating = True
    try:
        epoch_loop.val_loop.run()
    finally:
        trainer.training = True
        trainer._logger_connector._first_loop_iter = first_loop_iter


def validate_with_grad_allowed(trainer, model, datamodule) -> dict:
    """``trainer.validate`` under ``torch.no_grad`` rather than inference mode (Lightning's validate loop flag
    ``inference_mode``): tensors the attention backends cache on this pass (layouts, plans) are used by training
    afterwards, and inference tensors cannot take part in autograd. Returns the logged scores."""
    loop = trainer.validate_loop
    inference_mode, loop.inference_mode = loop.inference_mode, False
    try:
        return (trainer.validate(model, datamodule=datamodule, verbose=False) or [{}])[0]
    finally:
        loop.inference_mode = inference_mode


def launch_children_with(command) -> None:
    """Lightning's subprocess launcher starts a multi-process run's other ranks with ``_hydra_subprocess_cmd``
    when Hydra runs the job; ``command`` (``ddp.child_command``) replaces it in both modules that hold it (the
    trainer's launcher imported the fabric function by name)."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher
    fabric_launcher._hydra_subprocess_cmd = command
    trainer_launcher._hydra_subprocess_cmd = command


def check_internals() -> list[str]:
    """The Lightning attributes the functions above use that this Lightning lacks ([] when all are there): the
    test of this module fails loudly on a Lightning that moved one."""
    import lightning.pytorch as pl
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher
    missing = [f"{m.__name__}._hydra_subprocess_cmd" for m in (fabric_launcher, trainer_launcher)
               if not hasattr(m, "_hydra_subprocess_cmd")]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    for owner, attr in ((trainer, "_logger_connector"), (trainer.fit_loop.epoch_loop, "val_loop"),
                        (trainer.validate_loop, "inference_mode")):
        if not hasattr(owner, attr):
            missing.append(f"{type(owner).__name__}.{attr}")
    if not hasattr(getattr(trainer, "_logger_connector", None), "_first_loop_iter"):
        missing.append("_LoggerConnector._first_loop_iter")
    from lightning.pytorch.callbacks import RichProgressBar
    if not callable(getattr(RichProgressBar, "_get_train_description", None)):  # callbacks.RunProgressBar overrides it
        missing.append("RichProgressBar._get_train_description")
    if not isinstance(trainer.fit_loop.epoch_loop, _TrainingEpochLoop):
        missing.append("fit_loop.epoch_loop is a _TrainingEpochLoop")
    return missing
