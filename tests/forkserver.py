"""`forget` commands in processes forked from a server that has already imported the pipeline.

A fresh interpreter spends ~8 CPU-s here importing torch, timm, PEFT, Prefect and MLflow
before a command does anything; the crash tests start dozens. The tests use the server a
worker's flow runs fork from (``forgetting_cli.flow_runs``), one for the whole run (shared by
pytest-xdist's processes, like the Prefect server): it imports ``tests.forkserver_preload``
once (no threads are running then) and forks one process per command. Each command is still
its own OS process, with its own environment (Prefect's settings re-read from it: the
session's server, or the team stack's in test_stack.py), working folder, stdout and stderr;
SIGKILLed at a crash point it dies exactly as a fresh process would, and the kernel releases
its locks. What a test holds is the command's client process: its exit code is the
command's (-9 when SIGKILLed), a signal sent to it reaches the command, and killing it kills
the command. Tests about start-up itself (SIGTERM and the temporary server, latency) use
fresh interpreters instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forgetting_cli.flow_runs import SOCKET_ENV

REPO = Path(__file__).resolve().parent.parent
_STARTED: dict[str, str] = {}


def start(api_url: str, shared: Path, folder: Path, main_pid: int) -> None:
    """The run's fork server (started by the first process to need it; it ends with the
    process ``main_pid`` that began the run); commands write their output under ``folder``
    (this process's session folder, removed at its end)."""
    from filelock import FileLock

    if _STARTED:
        return
    shared.mkdir(parents=True, exist_ok=True)
    with FileLock(shared / "forkserver.lock"):
        found = shared / "forkserver-socket"
        if not found.exists():
            from forgetting_cli.flow_runs import start_server

            sock = start_server(shared, ("tests.forkserver_preload",),
                                env={**os.environ, "PREFECT_API_URL": api_url},
                                watch=main_pid, cwd=REPO)
            assert sock, "the tests' fork server did not start"
            found.write_text(sock)
    _STARTED.update(socket=found.read_text(), folder=str(folder))


def command(argv: list[str], env: dict) -> tuple[list[str], dict]:
    """(command line, environment) of ``forget ARGV`` forked from the server, for a test
    that starts the process itself (a long-running ``forget serve``)."""
    return ([sys.executable, "-m", "forgetting_cli.flow_runs", "--module", "forgetting_cli",
             *argv], server_env(env))


def server_env(env: dict) -> dict:
    """``env`` naming the server, for a program that forks its commands from it."""
    return {**env, SOCKET_ENV: _STARTED["socket"]}


class Forked:
    """A running command, with the part of ``subprocess.Popen``'s interface tests use."""

    def __init__(self, argv: list[str], env: dict, cwd: Path | None = None):
        self.args = ["forget", *argv]
        d = Path(tempfile.mkdtemp(prefix="forget-cmd-", dir=_STARTED.get("folder")))
        self._out, self._err = d / "stdout", d / "stderr"
        self._read = 0
        cmd, env = command(argv, env)
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self._proc = subprocess.Popen(cmd, env=env, cwd=cwd or os.getcwd(),
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()  # -9 when SIGKILLed

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.args} still running after {timeout} s") from None

    def output(self) -> tuple[str, str]:
        read = lambda p: p.read_text() if p.exists() else ""  # noqa: E731
        return read(self._out), read(self._err)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()

    def stderr_lines_since_last(self) -> list[str]:
        text = self._err.read_text() if self._err.exists() else ""
        new, self._read = text[self._read:], len(text)
        return new.splitlines(keepends=True)

    def wait_for_stderr(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            for line in self.stderr_lines_since_last():
                seen.append(line)
                if text in line:
                    return line
            if self.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.args} never said {text!r}:\n{''.join(seen)[-3000:]}")
