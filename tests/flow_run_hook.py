"""Preloaded by tests/test_flow_runs.py's server: its hook runs once there, before any fork."""

import os

PREPARED: list[int] = []


def before_forking_runs() -> None:
    PREPARED.append(os.getpid())
