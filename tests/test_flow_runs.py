"""A worker's flow runs forked from a preloaded server (forgetting_cli/flow_runs.py): each is
its own process with the client's environment, folder and streams; its exit code and signal
death are the client's; the client's death kills it and what it started; without a server
the client runs the module itself; the server ends with the worker that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from forgetting_cli.flow_runs import SOCKET_ENV

from .helpers import poll

ROOT = Path(__file__).resolve().parent.parent
CLIENT = [sys.executable, "-m", "forgetting_cli.flow_runs", "--module", "tests.flow_run_probe"]


@pytest.fixture
def server(tmp_path):
    """(socket path, the stand-in worker): the server is the worker's child, as under
    ``forget worker``; it preloads only a module with a ``before_forking_runs`` hook."""
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from forgetting_cli.flow_runs import start_server; "
         "print(start_server(Path(sys.argv[1]), ('tests.flow_run_hook',)), flush=True); "
         "time.sleep(300)",
         str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    path = worker.stdout.readline().strip()
    assert path.endswith("server.sock"), path
    yield path, worker
    worker.kill()


def _client(path: str | None, *args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    env.update(PROBE_MSG="hello", PYTHONPATH=str(ROOT), **({SOCKET_ENV: path} if path else {}))
    return subprocess.Popen([*CLIENT, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            text=True)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_forked_run_has_the_clients_environment_folder_streams_and_exit_code(server, tmp_path):
    path, worker = server
    for sock in (path, None):  # forked, then as a fresh interpreter
        c = _client(sock, "exit", "3", cwd=tmp_path)
        out, _ = c.communicate(timeout=60)
        first, *rest = out.splitlines()
        msg, cwd, pid, prepared, frozen = first.split()
        assert rest == ["the run's exit handler"], out  # its own, not the server's
        assert (c.returncode, msg, cwd) == (3, "hello", str(tmp_path))
        assert (int(pid) == c.pid) == (sock is None)
        # forked: after the preload's hook, with the preloaded heap frozen (gc.freeze)
        assert (prepared == "True") == (int(frozen) > 0) == (sock is not None), out
    assert worker.poll() is None


def test_signals_reach_the_run_and_the_clients_death_kills_it(server, tmp_path):
    path, _ = server
    pids = tmp_path / "pids"
    c = _client(path, "sleep", str(pids), cwd=tmp_path)
    poll(pids.exists, "the run starts", 60, every=0.1)
    run, child = map(int, pids.read_text().split())
    c.send_signal(signal.SIGTERM)  # forwarded to the run, which dies of it: so does the client
    assert c.wait(30) == -signal.SIGTERM
    poll(lambda: _gone(run), "the run ends", 30, every=0.1)
    os.kill(child, signal.SIGKILL)  # (a SIGTERM to the run is not one to its children)

    pids.unlink()
    c = _client(path, "sleep", str(pids), cwd=tmp_path)
    poll(pids.exists, "the run starts", 60, every=0.1)
    run, child = map(int, pids.read_text().split())
    os.kill(run, signal.SIGKILL)  # a run killed (a crash point, the OOM killer): its client too
    assert c.wait(30) == -signal.SIGKILL
    os.kill(child, signal.SIGKILL)

    pids.unlink()
    c = _client(path, "sleep", str(pids), cwd=tmp_path)
    poll(pids.exists, "the run starts", 60, every=0.1)
    run, child = map(int, pids.read_text().split())
    c.kill()  # as a worker's host dies: the run and what it started go with it
    c.wait(30)
    poll(lambda: _gone(run) and _gone(child), "the run and its child are killed", 30,
         every=0.1)


def test_the_server_ends_with_its_worker(server):
    path, worker = server
    worker.kill()
    worker.wait(30)
    poll(lambda: not Path(path).exists(), "the server removes its socket and ends", 30,
         every=0.2)
