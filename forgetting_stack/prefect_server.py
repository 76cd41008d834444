"""The Prefect server over HTTPS, on PostgreSQL, behind basic auth.

``prefect server start`` has no TLS options, so this starts what it starts in the background
(uvicorn on ``prefect.server.api.server:create_app``, ``PREFECT__SERVER_FINAL=1``: the same
app with its services) and gives uvicorn the certificate."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .processes import wait_http


def start(stack, s: dict, creds: dict) -> Callable[[], None]:
    """Started, not yet answering: the returned call waits for it (the two Python servers
    start side by side, about 10 s each)."""
    stack.prefect_home.mkdir(parents=True, exist_ok=True)
    h, port = s["host"], s["ports"]["prefect"]
    tls = stack.tls(s)
    env = {"PREFECT__SERVER_FINAL": "1","PREFECT_HOME": str(stack.prefect_home),
           "PREFECT_API_DATABASE_CONNECTION_URL": stack.pg_url("prefect", "postgresql+asyncpg"),
           "PREFECT_SERVER_API_AUTH_STRING": creds["PREFECT_API_AUTH_STRING"],
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_UI_API_URL": f"https://{h}:{port}/api"}
    proc = stack.spawn("prefect", [
        sys.executable, "-m", "uvicorn", "--factory",
        "prefect.server.api.server:create_app", "--host", h, "--port", str(port),
        "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
        "--timeout-keep-alive", "5"], env, stack.prefect_home)
    return lambda: wait_http("prefect", f"https://{h}:{port}/api/health",
                             stack.logs / "prefect.log", proc, ca=tls["ca"])
