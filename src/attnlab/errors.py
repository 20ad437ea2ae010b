"""The errors a user can cause, in one place. Only these are "bad input": every command prints one as one line
naming the value and what is allowed, with exit code 2 (``attnlab.cli``). Any other exception is a bug in attnlab
and is shown with its traceback and a line saying so.

They derive from ValueError so that code written against the earlier per-module classes keeps working; a plain
ValueError (or any other exception) is never turned into one of them.
"""
from __future__ import annotations


class UserError(ValueError):
    """The input is wrong: a setting, a file, a run folder or a checkpoint. The message says which and what to do."""


class ConfigError(UserError):
    """A bad setting (command line, preset, or a run folder's recorded config)."""


class DataError(UserError):
    """Training or evaluation text that cannot be used (missing, empty, too short for one window, unreadable)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, damaged, of another run, or needing code to load."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf: an outcome of the settings (exit code 1 with one line), not a bug."""


BUG_REPORT = ("this is a bug in attnlab, not a problem with your input: please report it with the traceback below "
              "and the command that ran")
