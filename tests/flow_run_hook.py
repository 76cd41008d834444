"""Preloaded by tests/test_flow_runs.py's server: its hook runs once there, before any fork."""

PREPARED: list[int] = []


def before_forking_runs() -> None:
    import os

    PREPARED.append(os.getpid())
