"""What a killed run can leave behind, cleaned up by the next run before it starts work.

Every write is a temp path renamed into place, and every step of a request is idempotent (keyed
by the request id), so a killed run leaves at most: temp files, the scratch folder of a request
that finished, a RUNNING/FAILED MLflow run (see ``registry.discard_unfinished_runs``), and
ledger/report/adapter changes that were not yet committed to DVC. This handles the rest.
"""

from __future__ import annotations

import logging
import shutil

from prefect import task
from prefect.cache_policies import NO_CACHE

from .dvc import status_clean, track_paths
from .locks import hold, ledger_lock
from .requests import ledger
from .workspace import Workspace

log = logging.getLogger("forgetting")


def _remove_temp(ws: Workspace, paths) -> list[str]:
    done = []
    for p in paths:
        if not p.exists():
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        done.append(f"removed {ws.rel(p)}")
    return done


@task(cache_policy=NO_CACHE)
def recover(root: str) -> list[str]:
    """Run under the run lock, so no other run or purge is writing; ``request add`` writes
    its temp files in ``data/requests`` under the ledger lock, so that folder is cleaned
    under it too."""
    ws = Workspace.at(root)
    done: list[str] = []
    if ws.data.exists():
        leftovers = sorted([*ws.data.rglob(".*.tmp-*"), *ws.data.rglob(".*.old-*")])
        done += _remove_temp(ws, [p for p in leftovers if ws.requests not in p.parents])
        with hold(ledger_lock(ws), "the request ledger"):
            done += _remove_temp(ws, sorted(ws.requests.glob(".*.tmp-*")))
    for r in ledger(ws).all():
        if r.status not in ("pending", "running") and (ws.work / r.id).exists():
            shutil.rmtree(ws.work / r.id)
            done.append(f"removed scratch of {r.id}")
    paths = [ws.rel(p) for p in (ws.adapters, ws.reports, ws.requests) if p.exists()]
    never_tracked = [p for p in paths if not (ws.root / f"{p}.dvc").exists()]
    if paths and (ws.root / ".dvc").exists() and (never_tracked or not status_clean(ws.root)):
        # the params are committed with the request they were used for, not here
        track_paths(root, paths, "commit what was left uncommitted (requests queued since the "
                                 "last run, or files of an interrupted run)")
        done.append("tracked " + ", ".join(paths))
    for line in done:
        log.info(f"recovery: {line}")
    return done


@task(cache_policy=NO_CACHE)
def remove_scratch(root: str, request_id: str) -> None:
    """The work dir of a finished request (the parent checkpoint, prototypes, metrics)."""
    shutil.rmtree(Workspace.at(root).work / request_id, ignore_errors=True)
