"""The MLflow tracking server over HTTPS: runs and registry on PostgreSQL, artifacts proxied to S3,
MLflow's basic-auth app (users in PostgreSQL, no permission for anyone but its admin)."""

from __future__ import annotations

import os
from collections.abc import Callable

from .processes import wait_http
from .settings import BUCKET, USER, write_private

# MLflow's server processes (uvicorn workers; 2 by default): each imports MLflow's app, ~5
# CPU-s here, and takes requests on its own. The tests run 1 (tests/conftest.py)
WORKERS = "FORGET_STACK_MLFLOW_WORKERS"


def start(stack, s: dict, creds: dict) -> Callable[[], None]:
    folder = stack.dir / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "basic_auth.ini"
    write_private(ini, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                       f"database_uri = {stack.pg_url('mlflow_auth')}\n"
                       f"admin_username = {USER}\n"
                       f"admin_password = {creds['MLFLOW_TRACKING_PASSWORD']}\n"
                       "authorization_function = "
                       "mlflow.server.auth:authenticate_request_basic_auth\n"
                       # a password check is PBKDF2: 0.34 s per request here without the
                       # cache (measured), which made logging a run take 28 s
                       "auth_cache_ttl_seconds = 60\n")
    h, port = s["host"], s["ports"]["mlflow"]
    tls = stack.tls(s)
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["MLFLOW_FLASK_SERVER_SECRET_KEY"],
           "MLFLOW_S3_ENDPOINT_URL": f"https://{h}:{s['ports']['s3']}",
           "AWS_CA_BUNDLE": str(tls["ca"]),
           "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
           "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # (tasks/environment.py)
    proc = stack.spawn("mlflow", [
        stack.tool("mlflow"), "server", "--backend-store-uri", stack.pg_url("mlflow"),
        "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", h, "--port", str(port),
        "--app-name", "basic-auth", "--workers", os.environ.get(WORKERS, "2"),
        "--allowed-hosts", f"{h},{h}:{port},localhost,localhost:{port}",
        # uvicorn kills a worker that misses a 5 s health ping; a worker still importing
        # MLflow on a busy host misses it, and the restart loop never ends (measured: a
        # restart during the fault test, 3 minutes of "Child process died")
        "--uvicorn-opts", f"--ssl-certfile {tls['cert']} --ssl-keyfile {tls['key']} "
                          "--timeout-worker-healthcheck 60"],
        env, folder)
    return lambda: wait_http("mlflow", f"https://{h}:{port}/health", stack.logs / "mlflow.log",
                             proc, ca=tls["ca"])
