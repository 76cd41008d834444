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


def _terminate(signum, frame) -> NoReturn:
    # SystemExit unwinds like Ctrl-C: locks released, atexit handlers run (Prefect stops its
    # temporary server there); the default SIGTERM action would skip all of that
    raise SystemExit(128 + signum)


class _NoPrefectErrors(logging.Filter):
    """On the console only: drop Prefect's error records about the exception (the traceback of
    a failed task and flow, repeated); they still reach the flow run's logs in the UI."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        return not (record.levelno >= logging.ERROR and record.name.startswith("prefect"))


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
