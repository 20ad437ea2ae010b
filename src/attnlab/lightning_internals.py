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
