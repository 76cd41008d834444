"""Preloaded by tests/test_flow_runs.py's server: its hook runs once there, before any fork;
its exit handler is the server's, never a forked run's."""

import atexit
import os

PREPARED: list[int] = []


def before_forking_runs() -> None:
    PREPARED.append(os.getpid())


atexit.register(print, "the server's exit handler", flush=True)
