"""The workspace repositories over HTTPS: git's own smart-HTTP server (``git http-backend``)
behind basic auth, served by gunicorn with the stack's certificate.

Why this and not ``git daemon`` or SSH: ``git daemon`` has no authentication at all, and an SSH
server needs root or a second daemon to run and keys to hand out; smart HTTP is what hosted git
services speak, clients need only a user name and a token (``FORGET_GIT_USERNAME`` /
``FORGET_GIT_PASSWORD``, given to git by a credential helper that reads the environment), and
the same CA as every other endpoint. ``git http-backend`` does the protocol; this module only
decides who may read or write (``users``), and makes a repository on a writer's first push.

The WSGI app reads ``FORGET_GIT_ROOT`` (the bare repositories) and ``FORGET_STACK_USERS``."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .processes import wait_http
from .users import GIT_WRITE, UsersFile

REPO = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._-]{0,99})\.git(/.*)$")
READ = {"/info/refs?service=git-upload-pack", "/git-upload-pack"}
WRITE = {"/info/refs?service=git-receive-pack", "/git-receive-pack"}


def start(stack, s: dict, creds: dict) -> Callable[[], None]:
    stack.git_root.mkdir(parents=True, exist_ok=True)
    h, port = s["host"], s["ports"]["git"]
    tls = stack.tls(s)
    env = {"FORGET_GIT_ROOT": str(stack.git_root), "FORGET_STACK_USERS": str(stack.users_file)}
    proc = stack.spawn("git", [
        stack.tool("gunicorn"), "--bind", f"{h}:{port}", "--certfile", str(tls["cert"]),
        "--keyfile", str(tls["key"]), "--worker-class", "gthread", "--threads", "8",
        "--workers", "1", "--timeout", "600", "--access-logfile", "-",
        # gunicorn's control socket defaults to ~/.gunicorn/gunicorn.ctl, one per user: a
        # second stack on the host would take the first one's; the stack stops it by its pid
        "--no-control-socket",
        "forgetting_stack.git_http:app"], env, stack.git_root)
    return lambda: wait_http("git", f"https://{h}:{port}/", stack.logs / "git.log", proc,
                             ca=tls["ca"])


def create_repo(root: Path, name: str) -> Path:
    """A bare repository ``<name>.git`` (kept if it exists)."""
    repo = root / f"{name}.git"
    if not (repo / "HEAD").exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(repo)],
                       check=True, capture_output=True)
        subprocess.run(["git", "config", "http.receivepack", "true"], cwd=repo, check=True)
    return repo


def _deny(start_response, status: str, why: str, challenge: bool = False) -> list[bytes]:
    headers = [("Content-Type", "text/plain")]
    if challenge:
        headers.append(("WWW-Authenticate", 'Basic realm="forgetting stack git"'))
    start_response(status, headers)
    return [why.encode() + b"\n"]


def _user(environ: dict) -> tuple[str, str] | None:
    """(name, role) of valid basic-auth credentials, else None."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if not auth.startswith("Basic "):
        return None
    try:
        name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    role = UsersFile(Path(environ.get("FORGET_STACK_USERS") or os.environ["FORGET_STACK_USERS"])
                     ).check(name, password)
    return (name, role) if role else None


def app(environ: dict, start_response) -> Iterable[bytes]:
    """Smart HTTP only (no dumb-HTTP file serving); read for every user, write for the roles
    ``users.GIT_WRITE`` names; 401 without credentials, 403 for a role without the right."""
    root = Path(os.environ["FORGET_GIT_ROOT"])
    path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
    if path == "/":  # the health check: answers, shows nothing
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"forgetting stack git server\n"]
    m = REPO.match(path)
    action = (m.group(2) + (f"?{query}" if query else "")) if m else ""
    if not m or ".." in m.group(1) or action not in READ | WRITE:
        return _deny(start_response, "404 Not Found", "not a git smart-HTTP request")
    who = _user(environ)
    if who is None:
        return _deny(start_response, "401 Unauthorized", "credentials required", True)
    name, role = who
    writes = action in WRITE
    if writes and role not in GIT_WRITE:
        return _deny(start_response, "403 Forbidden", f"{name} ({role}) may not push")
    repo = root / f"{m.group(1)}.git"
    if not (repo / "HEAD").exists():
        if not writes:
            return _deny(start_response, "404 Not Found", f"no repository {m.group(1)}.git")
        create_repo(root, m.group(1))  # a writer's first push makes it
    return _backend(environ, start_response, root, name)


def _backend(environ: dict, start_response, root: Path, user: str) -> Iterable[bytes]:
    """``git http-backend`` as CGI: the request body spooled first (no pipe deadlock between a
    large push and a large answer), the answer streamed back."""
    cgi = {"GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": user,
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
    for k in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "REMOTE_ADDR",
              "HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL"):
        if environ.get(k):
            cgi[k] = environ[k]
    if environ.get("HTTP_GIT_PROTOCOL"):
        cgi["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
    body = tempfile.TemporaryFile()
    shutil.copyfileobj(environ["wsgi.input"], body)
    cgi["CONTENT_LENGTH"] = str(body.tell())
    body.seek(0)
    proc = subprocess.Popen(["git", "http-backend"], stdin=body, stdout=subprocess.PIPE,
                            env=cgi)  # its errors go to the server's log
    status, headers = "200 OK", []
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            break
        k, _, v = line.partition(":")
        if k.lower() == "status":
            status = v.strip()
        else:
            headers.append((k.strip(), v.strip()))
    start_response(status, headers)

    def stream() -> Iterable[bytes]:
        try:
            while chunk := proc.stdout.read(65536):
                yield chunk
        finally:
            proc.stdout.close()
            proc.wait()
            body.close()

    return stream()
