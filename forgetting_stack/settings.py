"""Where a stack lives and what it is called: its ports, its folder's files, its generated
credentials (mode 0600 from the first byte, never world-readable)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
from pathlib import Path

# Offsets from --port-base; the weed_* ports are SeaweedFS's internal master/volume/filer
# servers (and their gRPC ports, which default to port + 10000 and could collide).
PORTS = {"postgres": 0, "prefect": 1, "mlflow": 2, "s3": 3, "git": 4, "weed_master": 5,
         "weed_master_grpc": 6, "weed_volume": 7, "weed_volume_grpc": 8, "weed_filer": 9,
         "weed_filer_grpc": 10, "s3_grpc": 11, "postgres_local": 12, "s3_local": 13}
# "postgres" and "s3" are the TLS fronts (tls_front) other hosts reach; "postgres_local" and
# "s3_local" the servers themselves, on loopback only, like every weed_* and s3_grpc port
SERVICES = ("postgres", "s3", "git", "prefect", "mlflow")  # start order; down is reversed
USER = "forgetting"  # PostgreSQL role, S3 identity, MLflow admin, Prefect basic-auth user
LOCK_USER = "forgetting_lock"  # PostgreSQL role of clients: the run locks' database only
BUCKET = "forgetting"
DATABASES = ("prefect", "mlflow", "mlflow_auth", "forgetting")  # the last: run locks
DEFAULT_DIR = Path(os.environ.get("FORGET_STACK_DIR", "~/.forgetting-stack")).expanduser()
DEFAULT_PORT_BASE = 17100


class StackError(RuntimeError):
    """The stack cannot be started or reached; the message says which part and why."""


def write_private(path: Path, text: str) -> None:
    """Create-or-replace with mode 0600 from the first byte (never world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def env_lines(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export K=V`` lines of ``credentials.env`` / ``client.env``."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            out[k] = shlex.split(v)[0] if v else ""
    return out


def new_credentials() -> dict[str, str]:
    """Generated once per stack (``secrets``)."""
    return {"FORGET_STACK_PG_PASSWORD": secrets.token_urlsafe(18),
            "FORGET_STACK_LOCK_PASSWORD": secrets.token_urlsafe(18),
            "AWS_ACCESS_KEY_ID": "FG" + secrets.token_hex(9).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "MLFLOW_TRACKING_USERNAME": USER,
            "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18),
            "PREFECT_API_AUTH_STRING": f"{USER}:{secrets.token_urlsafe(18)}",
            "FORGET_GIT_PASSWORD": secrets.token_urlsafe(32),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24)}


def read_settings(path: Path) -> dict:
    return json.loads(path.read_text())
