"""What the ``forget`` command prints: one ``error:`` line per failure, progress lines off a
terminal, Prefect's tracebacks only with ``--verbose``; and SIGTERM handled like Ctrl-C, so
child servers (Prefect's temporary server) are stopped instead of orphaned."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import NoReturn

import typer

_state = {"verbose": False}


def verbose() -> bool:
    return _state["verbose"]


def fail(msg: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def setup(verbose_: bool) -> None:
    """Called once per command, before any work."""
    _state["verbose"] = verbose_
    if not verbose_:
        _quiet_libraries()
    log = logging.getLogger("forgetting")
    log.setLevel(logging.DEBUG if verbose_ else logging.INFO)
    log.propagate = False  # Prefect's root console handler would print every line twice
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per call)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _quiet_libraries() -> None:
    """What the libraries print that a user of ``forget`` has no use for: MLflow's database
    set-up lines, DVC's hints to stage files in git (each commit is made by the pipeline
    itself); ``--verbose`` shows them."""
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when MLflow is imported
    for name in ("mlflow", "alembic"):  # and if it was imported already
        logging.getLogger(name).setLevel(logging.WARNING)
    from tasks.dvc import quiet_staging_hints

    quiet_staging_hints()


def _terminate(signum, frame) -> NoReturn:
    # SystemExit unwinds like Ctrl-C: locks released, atexit handlers run (Prefect stops its
    # temporary server there); the default SIGTERM action would skip all of that
    raise SystemExit(128 + signum)


class _NoPrefectErrors(logging.Filter):
    """On the console only (the flow run's logs in the UI keep everything): drop Prefect's
    error records about the exception (the traceback of a failed task and flow, repeated),
    and the engine's own line per task run ("Finished in state Completed()"): a request runs
    a dozen tasks, and the console shows the flow's lines and the project's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        if record.levelno >= logging.ERROR and record.name.startswith("prefect"):
            return False
        return not (record.name == "prefect.task_runs" and record.levelno < logging.WARNING
                    and _PREFECT_DIR in record.pathname)


_PREFECT_DIR = "/prefect/"  # where the engine's records come from (a task's own: tasks/)


def quiet_prefect_errors() -> None:
    """Attach the filter to Prefect's console handlers (call after importing Prefect)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in
                                      list(logging.root.manager.loggerDict))]
    for lg in loggers:
        for h in getattr(lg, "handlers", []):
            if isinstance(h, PrefectConsoleHandler) and not any(
                    isinstance(f, _NoPrefectErrors) for f in h.filters):
                h.addFilter(_NoPrefectErrors())
