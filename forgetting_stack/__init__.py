"""``forget stack up | status | down | env``: the team stack on one host, from pip-installed
parts (no root, no Docker): PostgreSQL (``postgres``), a real S3 server (``s3``: SeaweedFS),
the Prefect server and an MLflow tracking server with basic auth, both on PostgreSQL, MLflow's
artifacts in S3 (``prefect_server``, ``mlflow_server``), and a git server for the workspace
repositories that workers clone (``git_server``). One module per service; ``processes``
starts, finds, waits for and stops them; ``settings`` holds the names, ports and credentials.

Everything lives under one folder (``--dir``): ``stack.json`` (addresses, not secret),
``credentials.env`` (mode 0600, generated once: PostgreSQL, S3, MLflow and Prefect passwords),
``client.env`` (mode 0600: what a client or worker exports), one data folder per service,
``logs/`` and ``run/`` (the pids of what ``up`` started: ``down`` stops those and nothing
else). Data survives ``down``/``up``. An ``up`` that fails stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import git_server, mlflow_server, postgres, prefect_server, s3
from .processes import alive, owned, port_owner, spawn, stop_group
from .settings import (
    BUCKET,
    DEFAULT_DIR,
    DEFAULT_PORT_BASE,
    PORTS,
    SERVICES,
    USER,
    StackError,
    env_lines,
    new_credentials,
    read_env_file,
    write_private,
)

__all__ = ["BUCKET", "DEFAULT_DIR", "PORTS", "SERVICES", "USER", "Stack", "StackError",
           "alive", "free_port_base", "read_env_file"]

STARTERS = {"postgres": postgres.start, "s3": s3.start, "git": git_server.start,
            "prefect": prefect_server.start, "mlflow": mlflow_server.start}


@dataclass(frozen=True)
class Stack:
    dir: Path

    settings_file = property(lambda s: s.dir / "stack.json")
    credentials_file = property(lambda s: s.dir / "credentials.env")
    client_file = property(lambda s: s.dir / "client.env")
    logs = property(lambda s: s.dir / "logs")
    run = property(lambda s: s.dir / "run")
    pg = property(lambda s: s.dir / "postgres")
    s3_data = property(lambda s: s.dir / "s3")
    git_root = property(lambda s: s.dir / "git")
    prefect_home = property(lambda s: s.dir / "prefect")

    # --- settings and credentials -------------------------------------------------------
    def settings(self) -> dict:
        if not self.settings_file.is_file():
            raise StackError(f"no stack at {self.dir}: run `forget stack up --dir {self.dir}`")
        return json.loads(self.settings_file.read_text())

    def configure(self, host: str | None, port_base: int | None) -> dict:
        """stack.json: kept from the first ``up``; a new host or port base only while down."""
        old = json.loads(self.settings_file.read_text()) if self.settings_file.is_file() else {}
        new = {"host": host or old.get("host", "127.0.0.1"),
               "port_base": port_base or old.get("port_base", DEFAULT_PORT_BASE)}
        if old and new != {k: old[k] for k in new} and self.running():
            raise StackError(f"the stack at {self.dir} runs on {old['host']} from port "
                             f"{old['port_base']}: `forget stack down` it before changing that")
        new["ports"] = {k: new["port_base"] + off for k, off in PORTS.items()}
        if new != old:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.settings_file.write_text(json.dumps(new, indent=2) + "\n")
        return new

    def credentials(self) -> dict[str, str]:
        """Generated once, kept in a 0600 file outside any repository."""
        if self.credentials_file.is_file():
            return read_env_file(self.credentials_file)
        creds = new_credentials()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_private(self.credentials_file, env_lines(creds))
        return creds

    def client_env(self) -> dict[str, str]:
        """What a submitting client or a worker exports (URLs and credentials)."""
        s, c = self.settings(), self.credentials()
        h, p = s["host"], s["ports"]
        return {
            "PREFECT_API_URL": f"http://{h}:{p['prefect']}/api",
            "PREFECT_API_AUTH_STRING": c["PREFECT_API_AUTH_STRING"],
            "MLFLOW_TRACKING_URI": f"http://{h}:{p['mlflow']}",
            "MLFLOW_TRACKING_USERNAME": c["MLFLOW_TRACKING_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": c["MLFLOW_TRACKING_PASSWORD"],
            "MLFLOW_S3_ENDPOINT_URL": f"http://{h}:{p['s3']}",
            "AWS_ACCESS_KEY_ID": c["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": c["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "FORGET_S3_BUCKET": BUCKET,
            "FORGET_GIT_URL": f"git://{h}:{p['git']}",
            "FORGET_LOCK_URL": self.pg_url("forgetting"),
        }

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        s, c = self.settings(), self.credentials()
        return (f"{driver}://{USER}:{c['FORGET_STACK_PG_PASSWORD']}@{s['host']}:"
                f"{s['ports']['postgres']}/{database}")

    # --- processes ----------------------------------------------------------------------
    @property
    def mark(self) -> str:
        """In the environment of every process ``up`` starts: how ``pid`` knows its own."""
        return f"FORGET_STACK_DIR={self.dir}"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid ``up`` started for ``name``, if that process still runs and is ours (a
        recycled pid is never signalled)."""
        f = self.pg / "data" / "postmaster.pid" if name == "postgres" else self.pidfile(name)
        try:
            pid = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if owned(pid, self.dir, self.mark) else None

    def running(self) -> dict[str, int]:
        return {n: p for n in SERVICES if (p := self.pid(n)) is not None}

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path
              ) -> subprocess.Popen:
        return spawn(cmd, env, cwd, self.logs / f"{name}.log", self.mark, self.pidfile(name))

    @staticmethod
    def tool(name: str) -> str:
        from tasks.environment import tool as env_tool

        path = env_tool(name)
        if shutil.which(path) is None:
            raise StackError(f"{name} not found: `pip install 'forgetting-pipeline[stack]'`")
        return path

    # --- services -----------------------------------------------------------------------
    def up(self, host: str | None = None, port_base: int | None = None,
           only: tuple[str, ...] = SERVICES) -> list[str]:
        """Start what is not running (idempotent); returns one line per service. ``only``:
        these services (in start order; what they need must be among them or running). A
        port another process holds is named with that process; a failure stops what this
        call started, so a second ``up`` does not trip over it."""
        s = self.configure(host, port_base)
        creds = self.credentials()
        lines, waits, started = [], [], []
        try:
            for name in (n for n in SERVICES if n in only):
                if self.pid(name) is not None:
                    lines.append(f"{name}: already running")
                    continue
                if owner := port_owner(s["host"], s["ports"][name]):
                    raise StackError(f"{name} cannot start: port {s['host']}:"
                                     f"{s['ports'][name]} is taken by {owner}; stop it or "
                                     "choose another --port-base")
                started.append(name)
                wait = STARTERS[name](self, s, creds)
                if wait is not None:  # the two Python servers start side by side
                    waits.append(wait)
                lines.append(f"{name}: started")
            for wait in waits:
                wait()
        except BaseException:
            self.stop(started)
            raise
        write_private(self.client_file, env_lines(self.client_env()))
        return lines

    def create_repo(self, name: str) -> Path:
        """A bare repository ``<name>.git`` on the git server (kept if it exists)."""
        return git_server.create_repo(self.git_root, name)

    def status(self) -> dict[str, dict]:
        s = self.settings()
        out = {}
        for name in SERVICES:
            port = s["ports"][name]
            answers = False
            with contextlib.suppress(OSError), socket.create_connection((s["host"], port), 1):
                answers = True
            out[name] = {"pid": self.pid(name), "address": f"{s['host']}:{port}",
                         "answers": answers}
        return out

    def down(self) -> list[str]:
        """Stop what ``up`` started (its pids, checked to be this stack's); data stays."""
        return self.stop(list(SERVICES))

    def stop(self, names: list[str]) -> list[str]:
        """Stop these services where they run as ours. The servers get SIGTERM together
        (SeaweedFS alone takes 15 s), PostgreSQL last."""
        pids = {name: self.pid(name) for name in reversed(SERVICES) if name in names}
        lines = [f"{name}: not running" for name, pid in pids.items() if pid is None]
        servers = {n: p for n, p in pids.items() if p is not None and n != "postgres"}
        with ThreadPoolExecutor(max(1, len(servers))) as pool:
            list(pool.map(stop_group, servers.values()))
        for name, pid in servers.items():
            self.pidfile(name).unlink(missing_ok=True)
            lines.append(f"{name}: stopped (pid {pid})")
        if pids.get("postgres") is not None:
            postgres.stop(self)
            lines.append(f"postgres: stopped (pid {pids['postgres']})")
        return lines

    def ui(self) -> dict[str, str]:
        s = self.settings()
        h, p = s["host"], s["ports"]
        return {"Prefect UI": f"http://{h}:{p['prefect']}",
                "MLflow UI": f"http://{h}:{p['mlflow']}",
                "S3 endpoint": f"http://{h}:{p['s3']} (bucket {BUCKET})",
                "git server": f"git://{h}:{p['git']}/",
                "PostgreSQL": f"{h}:{p['postgres']} (user {USER})"}


def free_port_base(host: str = "127.0.0.1") -> int:
    """A --port-base whose whole block of ports is free on ``host`` now (tests, benchmarks)."""
    import random

    for _ in range(100):
        base = random.randint(20000, 40000)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + len(PORTS)):
                sock = socket.socket()
                socks.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise StackError(f"no free block of {len(PORTS)} ports on {host}")
