"""``forget stack up | status | down | env``: the team stack on one host, from pip-installed
parts (no root, no Docker): PostgreSQL (``postgres``), a real S3 server (``s3``: SeaweedFS),
the Prefect server and an MLflow tracking server with basic auth, both on PostgreSQL, MLflow's
artifacts in S3 (``prefect_server``, ``mlflow_server``), and a git server for the workspace
repositories that workers clone (``git_http``: smart HTTP behind basic auth). One module per
service; ``processes`` starts, finds, waits for and stops them; ``settings`` holds the names,
ports and credentials; ``tls`` the private CA whose certificate every endpoint serves (HTTPS,
and PostgreSQL requires TLS from any other host); ``users`` who may do what.

Everything lives under one folder (``--dir``): ``stack.json`` (addresses, not secret),
``credentials.env`` (mode 0600, generated once: PostgreSQL, S3, MLflow, Prefect and git
secrets), ``client.env`` (mode 0600: what a client or worker exports), ``tls/`` (the CA and
server certificate; keys 0600), ``users.json`` (0600), one data folder per service,
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

from . import git_http, mlflow_server, postgres, prefect_server, s3, tls
from .login import mlflow_login
from .processes import alive, owned, port_owner, spawn, stop_group
from .settings import (
    BUCKET,
    DEFAULT_DIR,
    DEFAULT_PORT_BASE,
    LOCK_USER,
    PORTS,
    SERVICES,
    USER,
    StackError,
    env_lines,
    new_credentials,
    read_env_file,
    write_private,
)
from .tls_front import FRONTS
from .users import ADMIN, UsersFile

__all__ = ["BUCKET", "DEFAULT_DIR", "PORTS", "SERVICES", "USER", "Stack", "StackError",
           "alive", "free_port_base", "mlflow_login", "read_env_file"]

STARTERS = {"postgres": postgres.start, "s3": s3.start, "git": git_http.start,
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
    tls_dir = property(lambda s: s.dir / "tls")
    users_file = property(lambda s: s.dir / "users.json")

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
        """Generated once, kept in a 0600 file outside any repository (a secret a newer
        version needs is added; none is ever changed)."""
        old = read_env_file(self.credentials_file) if self.credentials_file.is_file() else {}
        creds = {**new_credentials(), **old}
        if creds.keys() != old.keys():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_private(self.credentials_file, env_lines(creds))
        return creds

    def tls(self, s: dict | None = None) -> dict[str, Path]:
        """The CA and the server certificate for the stack's address (``tls.ensure``)."""
        return tls.ensure(self.tls_dir, (s or self.settings())["host"])

    def users(self) -> UsersFile:
        return UsersFile(self.users_file)

    def client_env(self) -> dict[str, str]:
        """What a submitting client or a worker exports (URLs and credentials)."""
        s, c = self.settings(), self.credentials()
        h, p = s["host"], s["ports"]
        ca = str(self.tls_dir / "ca.pem")
        return {
            "PREFECT_API_URL": f"https://{h}:{p['prefect']}/api",
            "PREFECT_API_AUTH_STRING": c["PREFECT_API_AUTH_STRING"],
            "PREFECT_API_SSL_CERT_FILE": ca,
            "MLFLOW_TRACKING_URI": f"https://{h}:{p['mlflow']}",
            "MLFLOW_TRACKING_USERNAME": c["MLFLOW_TRACKING_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": c["MLFLOW_TRACKING_PASSWORD"],
            "MLFLOW_TRACKING_SERVER_CERT_PATH": ca,
            "MLFLOW_S3_ENDPOINT_URL": f"https://{h}:{p['s3']}",
            "AWS_ACCESS_KEY_ID": c["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": c["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CA_BUNDLE": ca,
            "FORGET_S3_BUCKET": BUCKET,
            "FORGET_GIT_URL": f"https://{h}:{p['git']}",
            "FORGET_GIT_USERNAME": USER,
            "FORGET_GIT_PASSWORD": c["FORGET_GIT_PASSWORD"],
            "GIT_SSL_CAINFO": ca,
            "FORGET_LOCK_URL": self.pg_url("forgetting", remote=True),
        }

    def pg_url(self, database: str, driver: str = "postgresql", remote: bool = False) -> str:
        """``remote``: the lock role through the TLS front, verified (what any other host
        uses); else the stack's own user on loopback (the stack's own servers)."""
        s, c = self.settings(), self.credentials()
        if not remote:
            return (f"{driver}://{USER}:{c['FORGET_STACK_PG_PASSWORD']}@127.0.0.1:"
                    f"{s['ports']['postgres_local']}/{database}")
        return (f"{driver}://{LOCK_USER}:{c['FORGET_STACK_LOCK_PASSWORD']}@{s['host']}:"
                f"{s['ports']['postgres']}/{database}"
                f"?sslmode=verify-full&sslrootcert={self.tls_dir / 'ca.pem'}")

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
        self.tls(s)
        self.users().set(USER, ADMIN, creds["FORGET_GIT_PASSWORD"])
        lines, waits, started = [], [], []
        try:
            for name in (n for n in SERVICES if n in only):
                if self.pid(name) is not None and (name not in FRONTS
                                                   or self.pid(FRONTS[name]) is not None):
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
        for front in (FRONTS[n] for n in names if n in FRONTS):  # first: nothing new gets in
            if (pid := self.pid(front)) is not None:
                stop_group(pid)
            self.pidfile(front).unlink(missing_ok=True)
        lines = [f"{name}: not running" for name, pid in pids.items() if pid is None]
        servers = {n: p for n, p in pids.items() if p is not None and n != "postgres"}
        with ThreadPoolExecutor(max(1, len(servers))) as pool:
            list(pool.map(stop_group, servers.values()))
        for name, pid in servers.items():
            self.pidfile(name).unlink(missing_ok=True)
            lines.append(f"{name}: stopped (pid {pid})")
        if "s3" in servers and (gone := s3.remove_sockets(self.settings())):
            lines.append(f"s3: removed the sockets it left: {', '.join(map(str, gone))}")
        if pids.get("postgres") is not None:
            postgres.stop(self)
            lines.append(f"postgres: stopped (pid {pids['postgres']})")
        return lines

    def ui(self) -> dict[str, str]:
        s = self.settings()
        h, p = s["host"], s["ports"]
        return {"Prefect UI": f"https://{h}:{p['prefect']}",
                "MLflow UI": f"https://{h}:{p['mlflow']}",
                "S3 endpoint": f"https://{h}:{p['s3']} (bucket {BUCKET})",
                "git server": f"https://{h}:{p['git']}/<workspace>.git",
                "PostgreSQL": f"{h}:{p['postgres']} (user {USER}, TLS)",
                "CA certificate": str(self.tls_dir / "ca.pem")}


def free_port_base(host: str = "127.0.0.1") -> int:
    """A --port-base whose whole block of ports is free now on ``host`` and on 127.0.0.1
    (where the internal services listen), below the kernel's range for outgoing connections
    (tests, benchmarks: a client's ephemeral port must not take one of the block's)."""
    import random

    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    top = max(low - len(PORTS), 2000)
    for _ in range(100):
        base = random.randint(min(10000, top - 1000), top)
        socks: list[socket.socket] = []
        try:
            for address in dict.fromkeys((host, "127.0.0.1")):
                for port in range(base, base + len(PORTS)):
                    sock = socket.socket()
                    socks.append(sock)
                    sock.bind((address, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise StackError(f"no free block of {len(PORTS)} ports on {host}")
