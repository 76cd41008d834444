"""The two OS locks of a workspace (``filelock``: ``flock`` underneath, so the kernel releases
a lock when its holder dies, even by SIGKILL).

- run lock: whoever changes models, the dataset or the registry's aliases holds it (``forget
  run``, served runs, ``purge``, ``ingest``, ``pretrain``, ``promote``, ``rollback``), so a
  running request never sees its dataset or base model replaced, nor its alias history undone.
- ledger lock: every read-modify-write of the request files (``request add``: check, then write;
  status updates; ``request cancel``; recovery's temp-file cleanup in ``data/requests``).
"""

from __future__ import annotations

import contextlib
import logging
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


@contextlib.contextmanager
def run_lock(ws: Workspace, what: str, timeout: float = -1):
    """Hold the run lock; ``timeout`` seconds (-1: wait for as long as it takes)."""
    lock = _lock(ws.lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout == 0:
            raise Busy(f"a run is in progress in {ws.root} (it holds {ws.rel(ws.lock)}); "
                       f"{what} was not started: retry when it has finished") from None
        log.info(f"waiting for the run in progress to finish before {what}")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise Busy(f"a run still held {ws.rel(ws.lock)} after {timeout:.0f} s; {what} "
                       "was not started") from None
    try:
        yield
    finally:
        lock.release()


def run_in_progress(ws: Workspace) -> bool:
    """Whether another process holds the run lock right now."""
    lock = _lock(ws.lock)
    if lock.is_locked:  # held by this process
        return False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def ledger_lock(ws: Workspace) -> FileLock:
    return _lock(ws.state / "ledger.lock")


@contextlib.contextmanager
def hold(lock: FileLock, what: str):
    """Hold ``lock`` (waiting as long as it takes); says so at debug level when it must wait."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.debug(f"waiting for {what} ({lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
