"""`forget` commands in processes forked from a server that has already imported the pipeline.

A fresh interpreter spends ~9 s here importing torch, PEFT (which imports transformers),
Prefect and MLflow before a command does anything; the crash tests start dozens. Python's
``forkserver`` imports them once (no threads are running then) and forks one child per
command: each command is still its own OS process, with its own environment, working folder,
stdout and stderr; SIGKILLed at a crash point it dies exactly as a fresh process would, and
the kernel releases its locks. Prefect reads its settings at import; each child sets its
Prefect API URL and credentials from its environment (the session's server, or the team
stack's in test_stack.py). Tests about start-up
itself (SIGTERM and the temporary server, latency) use fresh interpreters instead.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

_CTX = multiprocessing.get_context("forkserver")
_STARTED: dict[str, str] = {}


def start(api_url: str, folder: Path) -> None:
    """Start the fork server for ``api_url`` (its Prefect settings are fixed at import);
    commands write their output under ``folder`` (the test session's, removed at its end)."""
    if _STARTED.get("api") == api_url:
        return
    assert not _STARTED, "one fork server per session"
    _CTX.set_forkserver_preload(["tests.forkserver_preload"])
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url  # the server's environment, at its start
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
    _STARTED.update(api=api_url, folder=str(folder))


def _child(argv: list[str], env: dict, cwd: str, out: str, err: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from forgetting_cli.main import app

    code = 0
    try:
        # a command for another Prefect server (the team stack's): its URL and credentials
        with temporary_settings(updates={PREFECT_API_URL: env.get("PREFECT_API_URL"),
                                         PREFECT_API_AUTH_STRING: env.get(
                                             "PREFECT_API_AUTH_STRING")}):
            app(args=argv, prog_name="forget")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Forked:
    """A running command, with the part of ``subprocess.Popen``'s interface tests use."""

    def __init__(self, argv: list[str], env: dict, cwd: Path | None = None):
        self.args = ["forget", *argv]
        d = Path(tempfile.mkdtemp(prefix="forget-cmd-", dir=_STARTED.get("folder")))
        self._out, self._err = d / "stdout", d / "stderr"
        self._read = 0
        self._proc = _CTX.Process(target=_child, args=(argv, env, str(cwd or os.getcwd()),
                                                       str(self._out), str(self._err)))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode  # -9 when SIGKILLed, as Popen says

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise TimeoutError(f"{self.args} still running after {timeout} s")
        return self._proc.exitcode

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
