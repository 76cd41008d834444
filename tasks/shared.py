"""A workspace shared by several hosts through the team stack (``forget stack``).

The hosts share nothing but servers: the workspace repository on a git server, its data and
adapters on the DVC remote (S3), runs and versions on the MLflow server, submissions and flow
runs on the Prefect server, and the run lock on PostgreSQL. What keeps a request processed
exactly once and in order across hosts:

- **One writer at a time.** The run lock is a PostgreSQL advisory lock keyed by the workspace
  name (``FORGET_LOCK_URL``), held by a session: when its holder dies, even by SIGKILL, its
  connection closes and PostgreSQL releases the lock (TCP keepalives end the session of a host
  that vanished without closing it).
- **Every holder starts from the remote's state** (``sync``, right after taking the lock) and
  pushes each commit at once (``git config forgetting.push true``): the adapter's commit
  reaches the git remote before its MLflow run exists, so a version's adapter can always be
  pulled by the next holder instead of being trained again.
- **Submissions are Prefect flow runs** of the workspace's deployment
  (``tasks.submissions``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from . import lock_guard
from .dvc import _repo, commit, set_dvc_config
from .git import git, is_worker_clone, on_stack_git, push, use_credentials
from .workspace import Workspace

log = logging.getLogger("forgetting")

LOCK_URL = "FORGET_LOCK_URL"  # postgresql://… of the stack (``forget stack env``)


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(url: str, name: str, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock ``name``; ``timeout`` as ``locks.run_lock``.
    Raises ``TimeoutError`` when it is still held elsewhere after ``timeout`` seconds."""
    import psycopg2

    con = psycopg2.connect(url, application_name=f"forget: {what}"[:60], connect_timeout=10,
                           keepalives=1, keepalives_idle=10, keepalives_interval=5,
                           keepalives_count=3)
    con.autocommit = True
    key = _key(name)
    try:
        with con.cursor() as cur:
            start = time.monotonic()
            said = False
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                if timeout == 0 or (timeout > 0 and time.monotonic() - start > timeout):
                    raise TimeoutError(name)
                if not said:
                    log.info(f"waiting for the run in progress on another host to finish "
                             f"before {what} (PostgreSQL lock {name!r})")
                    said = True
                time.sleep(1)
        lock_guard.hold(name, con)
        yield
    finally:
        lock_guard.release(name)
        con.close()  # ends the session: PostgreSQL releases the lock


def sync(root: Path, targets: list[str] | None = None) -> None:
    """Bring the clone to the remote's latest state, before the lock holder changes anything.
    A worker's clone (its own, made by ``checkout``) is reset: what a killed run left there
    uncommitted is dropped, and the next run redoes it from the shared state. A user's
    workspace is only fast-forwarded, so nothing of theirs is lost. ``targets``: pull only
    these DVC-tracked paths (default: all)."""
    git(root, "fetch", "-q", "origin")
    if not git(root, "ls-remote", "--heads", "origin", "main").strip():
        return  # nothing pushed yet (attach pushes first)
    if is_worker_clone(root):
        git(root, "reset", "-q", "--hard", "origin/main")
    else:
        try:
            git(root, "merge", "-q", "--ff-only", "origin/main")
        except RuntimeError as e:
            raise RuntimeError(f"{root} has commits that are not on the git remote and the "
                               f"remote moved on; push or rebase them first ({e})") from None
    follow_endpoint(root)
    with _repo(root) as repo:
        if targets is not None:
            targets = [str(root / t) for t in targets if (root / f"{t}.dvc").exists()]
        if targets or (targets is None and any((root / p).exists() for p in (
                "data/dataset.parquet.dvc", "data/models.dvc"))):
            repo.pull(targets, force=is_worker_clone(root))


def follow_endpoint(root: Path) -> None:
    """This host's S3 endpoint (``MLFLOW_S3_ENDPOINT_URL``) over the committed one, in DVC's
    ``--local`` config: a stack restored or moved to another address keeps working for clones
    made before, without a commit that would point every other host there too."""
    url = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if not url:
        return
    from dvc.config import Config

    cfg = Config(str(root / ".dvc"))
    remote = cfg["remote"].get("stack")
    if remote is None or remote.get("endpointurl") == url:
        return
    set_dvc_config(root, "local", {"remote": {"stack": {"endpointurl": url}}})


def attach(ws: Workspace, git_url: str, s3_url: str, endpoint: str,
           access_key: str | None, secret_key: str | None) -> None:
    """Point a workspace at the stack: DVC's default remote on S3 (endpoint committed, keys in
    DVC's ``--local`` config only), git's ``origin`` on the git server, push everything."""
    root = ws.root
    # origin first: the commit below is pushed, and to the stack named now (a restored stack
    # on a new address, say), not to the one before
    remotes = git(root, "remote").split()
    git(root, "remote", "set-url" if "origin" in remotes else "add", "origin", git_url)
    git(root, "config", "forgetting.push", "true")
    if on_stack_git(git_url):
        use_credentials(root)
    # in this process (tasks/dvc.py, set_dvc_config): five `dvc remote` processes,
    # ~0.5 CPU-s each here
    set_dvc_config(root, "repo", {"core": {"remote": "stack"},
                                  "remote": {"stack": {"url": s3_url, "endpointurl": endpoint}}})
    keys = {k: v for k, v in (("access_key_id", access_key),
                              ("secret_access_key", secret_key)) if v}
    # the default over ``forget init``'s local remote; the keys in the --local config only
    set_dvc_config(root, "local", {"core": {"remote": "stack"},
                                   **({"remote": {"stack": keys}} if keys else {})})
    follow_endpoint(root)  # drops an override an earlier address left in config.local
    commit(root, [".dvc/config"], "DVC remote: the team stack's S3")
    if any((root / "data").glob("*.dvc")):  # data tracked before the attach
        with _repo(root) as repo:
            repo.push()
    push(root)
