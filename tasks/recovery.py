"""What a killed run can leave behind, cleaned up by the next run before it starts work.

Every write is a temp path renamed into place, and every step of a request is idempotent (keyed
by the request id), so a killed run leaves at most: temp files, the scratch folder of a request
that finished, a RUNNING/FAILED MLflow run (see ``registry.discard_unfinished_runs``), and
ledger/report/adapter changes that were not yet committed to DVC. This handles the rest.
"""

from __future__ import annotations

import shutil

from prefect import task
from prefect.cache_policies import NO_CACHE

from .requests import ledger
from .versioning import _log, status_clean, track
from .workspace import Workspace


@task(cache_policy=NO_CACHE)
def recover(root: str) -> list[str]:
    """Run under the run lock, so nothing else is writing these paths."""
    ws = Workspace.at(root)
    done: list[str] = []
    for p in sorted(ws.data.rglob(".*.tmp*")) if ws.data.exists() else []:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        done.append(f"removed {ws.rel(p)}")
    for r in ledger(ws).all():
        if r.status not in ("pending", "running") and (ws.work / r.id).exists():
            shutil.rmtree(ws.work / r.id)
            done.append(f"removed scratch of {r.id}")
    paths = [ws.rel(p) for p in (ws.adapters, ws.reports, ws.requests) if p.exists()]
    if paths and (ws.root / ".dvc").exists() and not status_clean(ws.root):
        track(root, paths, "commit what an interrupted run left untracked")
        done.append("tracked " + ", ".join(paths))
    for line in done:
        _log(f"recovery: {line}")
    return done
