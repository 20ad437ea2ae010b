"""attnlab's Hydra plugins (Hydra loads sweepers and launchers only from the ``hydra_plugins`` package).

* ``OptunaSearch``: Hydra's Optuna sweeper, ending like any sweep when every trial failed.
* ``LocalLauncher``: parallel jobs on this machine, each in its own process (see ``launcher.py``).
"""
import logging

log = logging.getLogger("attnlab.sweep")

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
except ImportError:  # the sweep extra is not installed: hparams_search=... says so through Hydra
    _OptunaSweeper = object


class OptunaSearch(_OptunaSweeper):
    """Hydra's Optuna sweeper, ending like any sweep when no trial finished (all failed): the summary of every
    job and exit 1, instead of Optuna's 'No trials are completed yet' traceback."""

    def sweep(self, arguments):
        try:  # Optuna's own handler writes colour codes into logs: its records go through the project's instead
            import optuna
            optuna.logging.disable_default_handler()
            optuna.logging.enable_propagation()
        except ImportError:
            pass
        try:
            return super().sweep(arguments)
        except ValueError as e:
            # Optuna's in-memory and SQLite storages word "no completed trial" differently
            if "No trials are completed yet" not in str(e) and "Record does not exist" not in str(e):
                raise
            log.error("no trial of this search finished, so there are no best parameters; each job's reason "
                      "follows")


