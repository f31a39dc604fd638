"""What the processes of `geoseg segment --workers` set up before their first chunk (imports distributed)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["QuietTensorFlow", "quiet_cancellations", "quiet_shutdown"]


class QuietTensorFlow(WorkerPlugin):
    """Import TensorFlow in each worker process as the CLI does in its own: its C++ start-up lines (oneDNN,
    CUDA probes) hidden unless -vv. Without it each worker printed them into the run's output."""

    def __init__(self, verbosity: int) -> None:
        self.verbosity = verbosity

    def setup(self, worker) -> None:
        from geoseg.cli import load_tensorflow

        load_tensorflow(self.verbosity)


def quiet_cancellations() -> None:
    """In a worker: no warning for each task cancelled when a run is stopped ("Async instruction ... ended with
    CancelledError", one per chunk under way after a Ctrl-C, before geoseg's own line; h110)."""
    import logging

    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


def quiet_shutdown() -> None:
    """In a worker, once the run's outputs are written: nothing logged while the cluster closes (a heartbeat sent
    as the scheduler closed printed an error and its traceback after a run that had succeeded)."""
    import logging

    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"] + ["distributed"]:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
