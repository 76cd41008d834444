"""Named crash points for the crash-safety tests: with ``FORGETTING_KILL_AT=<name>`` set, the
process SIGKILLs itself when it reaches that point, exactly as an OOM kill or a power cut
would stop it there. Unset (always, outside tests) this does nothing."""

from __future__ import annotations

import os
import signal

POINTS = ("after-start", "after-train", "after-adapter-tracked", "after-mlflow-run",
          "after-register", "after-production-alias", "after-ledger-done",
          "purge-after-record", "purge-after-dataset")


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("FORGETTING_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
