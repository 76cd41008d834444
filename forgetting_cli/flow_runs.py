"""A worker's flow runs, forked from a process that has already imported the pipeline.

A flow run of a process worker is a fresh interpreter (``python -m prefect.engine``) that
imports torch, timm, PEFT, MLflow, DVC and Prefect before it does anything: 8 CPU-s on a
2-core Xeon here (17 without compiled bytecode), as much as training a one-class request
with the test configuration.
``forget worker`` starts ``serve`` once; it imports the request flow (no threads are running
then, CUDA untouched) and forks one process per flow run. The deployment's command (``main``)
is a small client: it hands the server its environment, working folder and standard streams,
forwards the signals it gets, and exits as the flow run exits (a signal death as that signal).
If it dies, the flow run's process group is SIGKILLed, so a host or worker killed mid-run
ends its flow run exactly as before; without a server (another kind of worker, or the server
gone) the client becomes ``python -m prefect.engine`` itself.

Hand-written on the standard library: Python's ``multiprocessing`` forkserver passes no
standard streams or environment per child, and a flow run is started by Prefect's worker as
a command, not as a Python call.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

SOCKET_ENV = "FORGET_FLOW_RUN_SOCKET"
_HEADER = struct.Struct("!I")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# --- the client: the flow run's process as the worker sees it ----------------------------
def main(argv: list[str]) -> None:
    """``[--module M] [ARGS]``: run module M (default: Prefect's engine) with ARGS."""
    module, args = (argv[1], argv[2:]) if argv[:1] == ["--module"] else ("prefect.engine", argv)
    conn = _connect(os.environ.get(SOCKET_ENV))
    if conn is None:
        os.execv(sys.executable, [sys.executable, "-m", module, *args])
    body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "module": module,
                       "argv": args}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(body))], [0, 1, 2])
    conn.sendall(body)

    def forward(signum: int, _frame) -> None:
        try:
            conn.sendall(b"%d\n" % signum)
        except OSError:  # the server's handler is gone; the answer will say so
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            sys.exit("the flow-run server went away during the run")
        answer += chunk
    code = int(answer)
    if code < 0:  # died of a signal: so does this process, as the worker expects
        if -code != signal.SIGKILL:  # (whose handler cannot be set)
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _connect(path: str | None) -> socket.socket | None:
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    return conn


# --- the server -------------------------------------------------------------------------
def serve(path: Path, preload: list[str], watch: int | None = None) -> None:
    """Import ``preload`` (the request flow) and do what it names to do before forking
    (``before_forking_runs``: first-use imports), then fork a run per connection until the
    parent (the worker), or the process ``watch``, is gone. The socket is bound only when
    that is done: a client that comes earlier starts a fresh interpreter."""
    import gc
    import importlib
    import threading

    for name in preload:
        module = importlib.import_module(name)
        if prepare := getattr(module, "before_forking_runs", None):  # flows/process_requests
            prepare()
    torch = sys.modules.get("torch")
    if threading.active_count() > 1 or (torch is not None and torch.cuda.is_initialized()):
        sys.exit("flow-run server: threads or CUDA started at import; not forking from it")
    # what is imported so far lives as long as the server: out of the collector's sight, each
    # run's full collections no longer walk the whole inherited heap (nor write to its pages,
    # copying them). Measured: a tiny `forget run` 6.9 -> 6.1 CPU-s; under cProfile, half of
    # its group-norm plot's 1.0 s was the collector's
    gc.freeze()
    parent = os.getppid()

    def alive() -> bool:
        if watch is None:
            return os.getppid() == parent
        try:
            os.kill(watch, 0)
        except ProcessLookupError:
            return False
        return True

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # each run's handler is reaped at exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a terminal's Ctrl-C is the worker's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    listener.bind(str(tmp))
    listener.listen(8)
    tmp.rename(path)  # ready
    try:
        while alive():
            if not select.select([listener], [], [], 1.0)[0]:
                continue
            conn, _ = listener.accept()
            uid = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
            if uid != os.getuid():  # (the folder is 0700 too)
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                listener.close()
                _handle(conn)  # never returns
            conn.close()
    finally:
        path.unlink(missing_ok=True)


def _handle(conn: socket.socket) -> None:
    """One flow run: fork it, relay signals to it, report how it ended."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        while len(head) < _HEADER.size:
            head += conn.recv(_HEADER.size - len(head))
        size, = _HEADER.unpack(head)
        body = b""
        while len(body) < size:
            body += conn.recv(size - len(body))
        job = json.loads(body)
        run = os.fork()
        if run == 0:
            conn.close()
            _run(job, fds)  # never returns
        with contextlib.suppress(OSError):
            os.setpgid(run, run)  # (also in the run: whichever comes first)
        for fd in fds:
            os.close(fd)
        conn.sendall(b"%d\n" % _relay(conn, run))
    finally:
        os._exit(0)


def _relay(conn: socket.socket, run: int) -> int:
    """Signals from the client to the run until it ends; the client gone: the run's group
    SIGKILLed (its process, and what it started)."""
    gone = False
    while True:
        pid, status = os.waitpid(run, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status)
        if gone:
            time.sleep(0.05)
            continue
        if not select.select([conn], [], [], 0.2)[0]:
            continue
        data = conn.recv(64)
        gone = not data
        with contextlib.suppress(ProcessLookupError):  # (it may have ended meanwhile)
            if gone:
                os.killpg(run, signal.SIGKILL)
            for line in data.split():
                os.kill(run, int(line))


def _run(job: dict, fds: list[int]) -> None:
    """The flow run, as ``python -m prefect.engine`` would run it, in its own process group
    (so that the client's death can take everything it started)."""
    code = 1
    # exit handlers as a fresh interpreter's: none of the server's (inherited with the fork),
    # and the run's own run before os._exit, which skips them (before: the temporary Prefect
    # server a run starts outlived it, holding the client's stdout, and the client never ended;
    # atexit's two private calls are CPython's, and no public API does this)
    atexit._clear()
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter's
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        import runpy

        import prefect.context
        from prefect.logging.configuration import setup_logging

        prefect.context.refresh_global_settings_context()  # Prefect read the server's at import
        setup_logging(incremental=True)
        sys.argv = [job["module"], *job["argv"]]
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start_server(folder: Path, preload: tuple[str, ...] = ("flows.team",),
                 env: dict[str, str] | None = None, watch: int | None = None,
                 cwd: Path | None = None, timeout: float = 300) -> str | None:
    """Start ``serve`` as a child of this process (the worker, which then execs Prefect's:
    the server ends with it, or with the process ``watch``), its socket in ``folder``;
    the socket's path once it is ready, or None (no server: each run starts an
    interpreter) if it did not come up."""
    import subprocess
    import tempfile

    d = folder / ".flow-runs"
    if len(str(d / "s")) > 100:  # a Unix socket's path has at most 107 bytes
        d = Path(tempfile.mkdtemp(prefix="forget-runs-"))
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    path = d / "server.sock"
    path.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "forgetting_cli.flow_runs", "serve",
                             str(path), *(["--watch", str(watch)] if watch else []), *preload],
                            env=env, cwd=cwd, start_new_session=watch is not None)
    from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

    @retry(retry=retry_if_result(lambda ready: ready is False), wait=wait_fixed(0.2),
           stop=stop_after_delay(timeout))
    def ready() -> bool | None:  # None: the server exited
        return True if path.exists() else (None if proc.poll() is not None else False)

    try:
        if ready():
            return str(path)
    except RetryError:
        pass
    proc.kill()
    return None


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        import argparse

        ap = argparse.ArgumentParser(prog="flow_runs serve")
        ap.add_argument("socket", type=Path)
        ap.add_argument("--watch", type=int, help="end with this process, not the parent")
        ap.add_argument("preload", nargs="*", help="modules imported before forking")
        a = ap.parse_intermixed_args(sys.argv[2:])
        serve(a.socket, a.preload, a.watch)
    else:  # the client: its arguments are the module's (argparse would take theirs)
        main(sys.argv[1:])
