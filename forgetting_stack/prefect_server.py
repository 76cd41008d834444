"""The Prefect server, on PostgreSQL, behind basic auth."""

from __future__ import annotations

from collections.abc import Callable

from .processes import wait_http


def start(stack, s: dict, creds: dict) -> Callable[[], None]:
    """Started, not yet answering: the returned call waits for it (the two Python servers
    start side by side, about 10 s each)."""
    stack.prefect_home.mkdir(parents=True, exist_ok=True)
    h, port = s["host"], s["ports"]["prefect"]
    env = {"PREFECT_HOME": str(stack.prefect_home),
           "PREFECT_API_DATABASE_CONNECTION_URL": stack.pg_url("prefect", "postgresql+asyncpg"),
           "PREFECT_SERVER_API_AUTH_STRING": creds["PREFECT_API_AUTH_STRING"],
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_UI_API_URL": f"http://{h}:{port}/api"}
    proc = stack.spawn("prefect", [stack.tool("prefect"), "server", "start", "--host", h,
                                   "--port", str(port)], env, stack.prefect_home)
    return lambda: wait_http("prefect", f"http://{h}:{port}/api/health",
                             stack.logs / "prefect.log", proc)
