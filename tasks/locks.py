"""The two OS locks of a workspace (``filelock``: ``flock`` underneath, so the kernel releases
a lock when its holder dies, even by SIGKILL).

- run lock: whoever changes models, the dataset or the registry's aliases holds it (``forget
  run``, served runs, ``purge``, ``ingest``, ``pretrain``, ``promote``, ``rollback``), so a
  running request never sees its dataset or base model replaced, nor its alias history undone.
- ledger lock: every read-modify-write of the request files (``request add``: check, then write;
  status updates; ``request cancel``; recovery's temp-file cleanup in ``data/requests``).

A workspace shared through the team stack adds a third: the run lock also takes the stack's
PostgreSQL advisory lock for the workspace's name (``tasks.shared``), which holds across hosts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from filelock import FileLock, Timeout

from .workspace import Workspace

log = logging.getLogger("forgetting")


class Busy(RuntimeError):
    """Another process holds the lock and did not release it in time."""


def _lock(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    # one object per path and process, shared by threads (Prefect runs tasks in worker
    # threads under the flow's lock): re-entrant there, exclusive between processes.
    # No soft-lock fallback: a stale marker file would outlive a killed holder.
    return FileLock(path, thread_local=False, is_singleton=True, fallback_to_soft=False,
                    preserve_lock_file=True)


def _acquire(lock: FileLock, waiting: str, level: int, timeout: float) -> None:
    """Take ``lock``; when it is held elsewhere, log ``waiting`` once, then wait up to
    ``timeout`` seconds (-1: as long as it takes; 0: not at all). Raises ``Timeout``."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        if timeout == 0:
            raise
    log.log(level, waiting)
    lock.acquire(timeout=timeout)


@contextlib.contextmanager
def run_lock(ws: Workspace, what: str, timeout: float = -1):
    """Hold the run lock; ``timeout`` seconds (-1: wait for as long as it takes). A workspace
    shared through the team stack (``tasks.shared``) also takes the stack's lock for its name,
    across hosts, then syncs from the remote before the caller changes anything."""
    lock = _lock(ws.lock)
    try:
        _acquire(lock, f"waiting for the run in progress to finish before {what}", logging.INFO,
                 timeout)
    except Timeout:
        raise Busy(f"a run is in progress in {ws.root} (it holds {ws.rel(ws.lock)}); {what} "
                   f"was not started{'' if timeout == 0 else f' within {timeout:.0f} s'}: "
                   "retry when it has finished") from None
    try:
        with _team_lock(ws, what, timeout):
            yield
    finally:
        lock.release()


@contextlib.contextmanager
def _team_lock(ws: Workspace, what: str, timeout: float):
    from . import shared
    from .errors import StackSettingsMissing
    from .git import attached

    if not attached(ws.root):
        yield
        return
    url = os.environ.get(shared.LOCK_URL)
    if not url:  # a file lock alone would not keep another host out
        raise StackSettingsMissing(
            f"{ws.root} is shared through a stack and {what} needs its run lock: export "
            f"{shared.LOCK_URL} and the stack's other client settings first "
            "(`set -a; . <stack dir>/client.env; set +a`)")
    name = f"run:{ws.name}"
    try:
        with shared.advisory_lock(url, name, what, timeout):
            shared.sync(ws.root)
            yield
    except TimeoutError:
        raise Busy(f"a run of workspace {ws.name!r} is in progress on another host (it holds "
                   f"the stack's lock {name!r}); {what} was not started: retry when it has "
                   "finished") from None


def ledger_lock(ws: Workspace) -> FileLock:
    return _lock(ws.state / "ledger.lock")


@contextlib.contextmanager
def hold(lock: FileLock, what: str):
    """Hold ``lock`` for as long as it takes; says so at debug level when it must wait."""
    _acquire(lock, f"waiting for {what} ({lock.lock_file})", logging.DEBUG, -1)
    try:
        yield
    finally:
        lock.release()
