"""The stack's run lock, as this process holds it: checked before each step that changes
shared state (a git push, an MLflow run, a model version, an alias).

The lock is a PostgreSQL session lock: if PostgreSQL restarts or becomes unreachable while a
run holds it, the session, and so the lock, is gone, and another host may take it. A holder
that went on regardless would write beside the new one; so a step that changes shared state
first asks its own session whether it still holds the lock, and stops the run if not (the
next holder finishes the request from what was pushed: every step is idempotent)."""

from __future__ import annotations

import threading

_held: dict[str, object] = {}  # lock name -> the psycopg2 connection holding it
_mutex = threading.Lock()  # a connection is not for two threads at once


class LockLost(RuntimeError):
    """This process no longer holds the stack's run lock it took."""


def hold(name: str, con: object) -> None:
    _held[name] = con


def release(name: str) -> None:
    _held.pop(name, None)


def check() -> None:
    """Raise ``LockLost`` unless every run lock this process took is still held."""
    import psycopg2

    with _mutex:
        for name, con in list(_held.items()):
            try:
                with con.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND pid = pg_backend_pid() AND granted")
                    held = cur.fetchone()[0] > 0
            except psycopg2.Error as e:
                held, why = False, str(e).strip().splitlines()[0] if str(e).strip() else type(e)
            else:
                why = "its session holds no lock"
            if not held:
                raise LockLost(f"lost the stack's run lock {name!r} ({why}): stopping before "
                               "changing shared state; the next run finishes this request")
