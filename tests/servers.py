"""Real server processes on 127.0.0.1 for tests (MLflow, Prefect), stopped with their children."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 180, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Until ``url`` answers (failing if ``proc`` exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"{proc.args} exited:\n{log.read_text()[-2000:] if log else ''}")
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within {timeout:.0f} s")
            time.sleep(0.5)


@contextlib.contextmanager
def server_process(cmd: list[str], health_url: str, log: Path, env: dict | None = None,
                   timeout: float = 180, wait: bool = True):
    """Start ``cmd`` in its own process group; yield once ``health_url`` answers (at once
    with ``wait=False``: the caller waits)."""
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        if wait:
            wait_for(health_url, timeout, proc, log)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the process group; SIGKILL it if it has not ended within 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # and whatever it started (workers)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
