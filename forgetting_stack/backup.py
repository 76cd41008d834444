"""``forget stack backup DIR`` and ``forget stack restore DIR``: everything a team's stack
holds, copied out and brought back into an empty stack folder (other host or ports allowed).

A backup holds: each PostgreSQL database (``pg_dump`` custom format: Prefect's flow runs and
deployments, MLflow's runs and registry, MLflow's users), every object of the S3 bucket (DVC's
data, adapters, ledger and reports; MLflow's artifacts), each git repository (``git bundle``,
all refs), ``users.json`` (token hashes only) and ``manifest.json`` (each file's sha256, checked
before a restore touches anything). Secrets (``credentials.env`` and the S3 identities' keys)
only with ``--secrets``: without them the restored stack gets new credentials (MLflow's admin
password is reset to the new one; users keep their git and MLflow tokens and need
``forget stack user add`` again for S3). Written to ``DIR.partial`` and renamed at the end, so a
failed backup never looks like a finished one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from . import postgres
from .settings import BUCKET, DATABASES, USER, StackError, write_private

SECRET_FILES = ("credentials.env", "s3-identities.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pg_env(stack) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": stack.credentials()["FORGET_STACK_PG_PASSWORD"]}


def _pg_args(stack) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(stack.settings()["ports"]["postgres_local"]), "-U", USER]


def _s3(stack):
    import boto3

    env = stack.client_env()
    return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        verify=env["AWS_CA_BUNDLE"])


def _run(cmd: list[str], **kw) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise StackError(f"{Path(cmd[0]).name} failed: {(res.stderr or res.stdout)[-1200:]}")


def backup(stack, dest: Path, secrets: bool = False) -> dict:
    """Copy the running stack into ``dest`` (which must not exist); returns the manifest."""
    dest = dest.resolve()
    if dest.exists():
        raise StackError(f"{dest} exists: a backup goes into a new folder")
    missing = [n for n in ("postgres", "s3") if stack.pid(n) is None]
    if missing:
        raise StackError(f"{', '.join(missing)} not running: `forget stack up` first")
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from a failed backup (the name says so)
    (tmp / "postgres").mkdir(parents=True)
    bins = postgres.bin_dir()
    for db in DATABASES:
        _run([str(bins / "pg_dump"), *_pg_args(stack), "-Fc", "-f",
              str(tmp / "postgres" / f"{db}.dump"), db], env=_pg_env(stack))
    s3, objects = _s3(stack), 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            key = o["Key"]
            if key.startswith("/") or ".." in key.split("/"):
                raise StackError(f"S3 key {key!r} cannot be a file name")
            out = tmp / "s3" / key
            out.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(BUCKET, key, str(out))
            objects += 1
    (tmp / "git").mkdir()
    for repo in sorted(stack.git_root.glob("*.git")):
        if (repo / "refs").exists() and subprocess.run(
                ["git", "show-ref", "-q"], cwd=repo).returncode == 0:
            _run(["git", "bundle", "create", "-q", str(tmp / "git" / f"{repo.stem}.bundle"),
                  "--all"], cwd=repo)
    if stack.users_file.is_file():
        shutil.copy2(stack.users_file, tmp / "users.json")
    if secrets:
        shutil.copy2(stack.credentials_file, tmp / "credentials.env")
        shutil.copy2(stack.s3_data / "identities.json", tmp / "s3-identities.json")
    files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {"made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "from": str(stack.dir), "settings": stack.settings(), "secrets": secrets,
                "databases": list(DATABASES), "s3_objects": objects, "files": files}
    write_private(tmp / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    for p in tmp.rglob("*"):
        if p.is_file():
            p.chmod(0o600)
    tmp.chmod(0o700)
    tmp.rename(dest)
    return manifest


def _check(src: Path) -> dict:
    if not (src / "manifest.json").is_file():
        raise StackError(f"{src} is not a stack backup (no manifest.json)")
    manifest = json.loads((src / "manifest.json").read_text())
    bad = [f for f, h in manifest["files"].items()
           if not (src / f).is_file() or _sha256(src / f) != h]
    if bad:
        raise StackError(f"backup {src} is damaged: {', '.join(bad[:5])} missing or changed")
    return manifest


def restore(stack, src: Path, host: str | None, port_base: int | None) -> list[str]:
    """Bring a backup into an empty stack folder and start it; returns ``up``'s lines."""
    src = src.resolve()
    manifest = _check(src)  # before anything is written
    if stack.settings_file.exists() or any(stack.dir.glob("*")):
        raise StackError(f"{stack.dir} is not empty: restore goes into a new stack folder")
    stack.dir.mkdir(parents=True, exist_ok=True)
    s = stack.configure(host or manifest["settings"]["host"], port_base)
    if manifest["secrets"]:
        write_private(stack.credentials_file, (src / "credentials.env").read_text())
    stack.credentials()
    for bundle in sorted((src / "git").glob("*.bundle")):
        repo = stack.git_root / f"{bundle.stem}.git"
        repo.parent.mkdir(parents=True, exist_ok=True)
        _run(["git", "clone", "-q", "--mirror", str(bundle), str(repo)])
        _run(["git", "config", "http.receivepack", "true"], cwd=repo)
        _run(["git", "remote", "remove", "origin"], cwd=repo)  # the backup's path
    if (src / "users.json").is_file():
        write_private(stack.users_file, (src / "users.json").read_text())
    stack.up(s["host"], s["port_base"], only=("postgres",))
    bins = postgres.bin_dir()
    for db in manifest["databases"]:
        _run([str(bins / "pg_restore"), *_pg_args(stack), "-d", db, "--no-owner",
              "--exit-on-error", str(src / "postgres" / f"{db}.dump")], env=_pg_env(stack))
    if not manifest["secrets"]:
        _reset_mlflow_admin(stack)
    if manifest["secrets"]:  # users' S3 keys (s3.start keeps them beside the stack's own)
        stack.s3_data.mkdir(parents=True, exist_ok=True)
        write_private(stack.s3_data / "identities.json",
                      (src / "s3-identities.json").read_text())
    stack.up(only=("postgres", "s3"))
    s3 = _s3(stack)
    root = src / "s3"
    for f in sorted(root.rglob("*")) if root.exists() else []:
        if f.is_file():
            s3.upload_file(str(f), BUCKET, str(f.relative_to(root)))
    return stack.up()


def _reset_mlflow_admin(stack) -> None:
    """The restored MLflow user database holds the old admin password's hash: set the new
    one, hashed as MLflow hashes it (werkzeug), before MLflow starts."""
    import psycopg2
    from werkzeug.security import generate_password_hash

    password = stack.credentials()["MLFLOW_TRACKING_PASSWORD"]
    with psycopg2.connect(stack.pg_url("mlflow_auth")) as con, con.cursor() as cur:
        cur.execute("UPDATE users SET password_hash = %s WHERE username = %s",
                    (generate_password_hash(password), USER))
    con.close()
