"""Named fault points for the crash-safety tests. With ``FORGETTING_KILL_AT=<name>`` the
process SIGKILLs itself when it reaches that point, exactly as an OOM kill or a power cut would
stop it there; with ``FORGETTING_PAUSE_AT=<name>`` it writes ``$FORGETTING_PAUSE_FILE`` and
waits until the test removes it (to break a server in the middle of a request), after passing
the point ``$FORGETTING_PAUSE_SKIP`` times (default 0), and only once (``<file>.done``).
``FORGETTING_PAUSE_PLAN=<file>`` does the same with ``<name> <pause file>`` read from that file
at every point, so that one long-lived worker can be told where to pause next. Unset (always,
outside tests) this does nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

POINTS = ("after-start", "after-train", "after-adapter-tracked", "in-log-run", "after-mlflow-run",
          "after-register", "after-production-alias", "after-ledger-done",
          "purge-after-record", "purge-after-dataset")


_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("FORGETTING_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("FORGETTING_PAUSE_AT") == name:
        if _seen.setdefault(name, 0) < int(os.environ.get("FORGETTING_PAUSE_SKIP", "0")):
            _seen[name] += 1  # pause at a later request of the same run
            return
        _pause(Path(os.environ["FORGETTING_PAUSE_FILE"]))
    plan = os.environ.get("FORGETTING_PAUSE_PLAN")
    if plan and Path(plan).exists():
        point, flag = Path(plan).read_text().split(maxsplit=1)
        if point == name:
            _pause(Path(flag.strip()))


def _pause(flag: Path) -> None:
    """Write ``flag``, wait until it is removed; once per flag (the later flow runs go on)."""
    done = flag.with_name(flag.name + ".done")
    if done.exists():
        return
    flag.write_text(str(os.getpid()))
    while flag.exists():
        time.sleep(0.2)
    done.touch()
