"""The processes a stack starts: spawned in their own session, known again by a mark in their
environment (a recycled pid is never signalled), waited for through tenacity, read through
psutil."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from tenacity import RetryError, retry, retry_if_exception_type, stop_after_delay, wait_fixed

from .settings import StackError


class Exited(Exception):
    """The process being waited for ended."""


def spawn(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, mark: str,
          pidfile: Path) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, ``mark`` (``FORGET_STACK_DIR=...``) in its
    environment, its output appended to ``log``, its pid in ``pidfile``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    key, _, value = mark.partition("=")
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **env, key: value}, start_new_session=True)
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def owned(pid: int, folder: Path, mark: str) -> bool:
    """``pid`` runs, is not a zombie, and is this stack's: its command line names the stack's
    folder, or its environment carries the mark."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if any(str(folder) in part for part in p.cmdline()):
            return True
        key, _, value = mark.partition("=")
        return p.environ().get(key) == value
    except (psutil.Error, OSError):
        return False


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped by its parent, is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_group(pid: int, timeout: float = 20) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    except psutil.Error:
        pass


def port_owner(host: str, port: int) -> str | None:
    """Who listens on ``host:port`` (pid and command line), or None when it is free."""
    try:
        with socket.socket() as s:  # a port left in TIME_WAIT by closed connections is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        return None
    except OSError:
        pass
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections("inet"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                p = psutil.Process(c.pid)
                return f"pid {c.pid} ({' '.join(p.cmdline())[:160]})"
    return "a process this user cannot see"


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-1500:] if log.exists() else ""


def wait_port(name: str, host: str, port: int, log: Path,
              proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Until ``host:port`` accepts a connection; a clear error with the log's tail if the
    process ends first or ``timeout`` passes."""
    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.3),
           retry=retry_if_exception_type(OSError), reraise=False)
    def connect() -> None:
        if proc is not None and proc.poll() is not None:
            raise Exited
        socket.create_connection((host, port), 1).close()

    try:
        connect()
    except (RetryError, Exited):
        raise StackError(f"{name} did not start on {host}:{port} (log: {log})\n{_tail(log)}"
                         ) from None


def wait_http(name: str, url: str, log: Path, proc: subprocess.Popen,
              timeout: float = 180, ca: Path | None = None) -> None:
    """Until ``url`` answers (any HTTP status but a connection error); HTTPS verified
    against ``ca``."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None

    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.5),
           retry=retry_if_exception_type(OSError), reraise=False)
    def get() -> None:
        if proc.poll() is not None:
            raise Exited
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=2, context=ctx)

    try:
        get()
    except (RetryError, Exited):
        raise StackError(f"{name} did not answer {url} (log: {log})\n{_tail(log)}") from None


def run(cmd: list[str], user: str | None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, user=user)
    if res.returncode != 0:
        raise StackError(f"{Path(cmd[0]).name} failed: "
                         f"{(res.stderr or res.stdout).strip()[-1200:]}")
