"""What another host gets from the stack without TLS or without credentials: run in a worker's
network namespace (``python -m tests.stack_probe``, the client's exports in the environment);
prints one JSON object, each check's outcome as the client saw it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def _plain_http(url: str) -> str:
    """An ``http://`` request to a TLS port: anything but an HTTP answer is a refusal."""
    plain = urlsplit(url)._replace(scheme="http").geturl()
    try:
        urllib.request.urlopen(plain, timeout=10)
        return "answered"
    except urllib.error.HTTPError as e:  # Go's TLS servers (SeaweedFS) answer this 400
        body = e.read().decode(errors="replace")
        if e.code == 400 and "HTTP request to an HTTPS server" in body:
            return "refused: plain HTTP to an HTTPS server (400)"
        return f"answered {e.code}"
    except (OSError, ValueError) as e:  # reset, closed, or a TLS alert read as garbage
        return f"refused: {type(e).__name__}"


def _git(*args: str, cwd: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGET_GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    res = subprocess.run(["git", "-c", "credential.helper=", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    return "ok" if res.returncode == 0 else f"refused: {res.stderr.strip().splitlines()[-1]}"


def main() -> dict[str, str]:
    e = os.environ
    out = {}
    repo = f"{e['FORGET_GIT_URL']}/forgetting.git"
    out["git_anonymous_read"] = _git("ls-remote", repo)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["git", "init", "-q", "-b", "main", d], check=True)
        subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q",
                        "--allow-empty", "-m", "anonymous"], cwd=d, check=True)
        out["git_anonymous_push"] = _git("push", repo, "HEAD:refs/heads/anonymous", cwd=d)
    out["mlflow_plain_http"] = _plain_http(e["MLFLOW_TRACKING_URI"] + "/health")
    out["s3_plain_http"] = _plain_http(e["MLFLOW_S3_ENDPOINT_URL"] + "/forgetting")
    out["prefect_plain_http"] = _plain_http(e["PREFECT_API_URL"] + "/health")
    import psycopg2

    plain = e["FORGET_LOCK_URL"].split("?")[0] + "?sslmode=disable"
    try:
        psycopg2.connect(plain, connect_timeout=10).close()
        out["postgres_plain"] = "answered"
    except psycopg2.OperationalError as err:
        out["postgres_plain"] = f"refused: {str(err).strip().splitlines()[-1]}"
    try:
        psycopg2.connect(e["FORGET_LOCK_URL"], connect_timeout=10).close()
        out["postgres_tls"] = "ok"
    except psycopg2.OperationalError as err:
        out["postgres_tls"] = f"refused: {err}"
    host = urlsplit(e["MLFLOW_S3_ENDPOINT_URL"]).hostname
    for name, port in json.loads(e["STACK_PROBE_INTERNAL_PORTS"]).items():
        try:
            socket.create_connection((host, port), 5).close()
            out[name] = "answered"
        except OSError as err:
            out[name] = f"refused: {type(err).__name__}"
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
