"""Requests submitted to a shared workspace: flow runs of its deployment (``forget request
add`` on an attached workspace), queued in submission order by the run that holds the lock.

A flow run, once it holds the lock, queues every submission not queued yet, in submission
order (``import_submissions``), then processes the whole queue in order: which worker's run
gets the lock first does not change the order.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from .workspace import Workspace

log = logging.getLogger("forgetting")

FLOW_NAME = "team-requests"


def deployment_name(name: str) -> str:
    return f"{FLOW_NAME}/{name}"


def submissions(name: str) -> list[dict]:
    """Requests submitted to workspace ``name`` (flow runs of its deployment with a ``submit``
    parameter), oldest first, leaving out those cancelled in Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> list:
        async with get_client() as client:
            dep = await client.read_deployment_by_name(deployment_name(name))
            runs, offset = [], 0
            while True:
                page = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=200, offset=offset)
                runs += page
                if len(page) < 200:
                    return runs
                offset += 200

    out = []
    for run in run_coro_as_sync(read()):
        spec = (run.parameters or {}).get("submit")
        state = run.state.type.value if run.state else ""
        if spec and state not in ("CANCELLED", "CANCELLING"):
            out.append({"id": str(run.id), "created": run.created.isoformat(), "spec": spec,
                        "flow_run": run.name})
    out.sort(key=lambda s: s["created"])
    return out


def import_submissions(ws: Workspace) -> list[str]:
    """Queue, in submission order, every submission the ledger does not hold yet (keyed by its
    flow run id: exactly once). One that fails the checks now (its class was queued by an
    earlier submission, say) is recorded as failed, with the reason. Under the run lock."""
    from pydantic import ValidationError

    from forgetting.requests import RequestError

    from .ledger import RequestSpec
    from .requests import check_request, ledger

    led = ledger(ws)
    known = {r.submission for r in led.all() if r.submission}
    added = []
    for sub in submissions(ws.name):
        if sub["id"] in known:
            continue
        try:
            spec = RequestSpec.model_validate(sub["spec"])
        except ValidationError as e:  # not a request (made outside `forget`): never queued
            log.warning(f"flow run {sub['flow_run']} carries no valid request, skipped: "
                        f"{str(e).splitlines()[0]}")
            continue
        try:
            req = led.add(spec, lambda s, queue: check_request(ws, s, queue),
                          submission=sub["id"])
        except RequestError as e:
            req = led.add(spec, lambda s, queue: None, submission=sub["id"])
            led.update(req.id, status="failed", error=f"at submission: {e}")
        added.append(f"{req.id} <- {sub['flow_run']}")
        log.info(f"queued {req.id} ({', '.join(spec.classes)}) from flow run {sub['flow_run']}")
    if added:  # on the remote before any of them is worked on
        from .dvc import track_paths

        track_paths(ws.root, [ws.rel(ws.requests)], "queued " + ", ".join(added))
    return added


def submit(ws: Workspace, spec) -> str:
    """Check ``spec`` here (against the synced dataset, the registry and the queue), then
    submit it as a flow run of the workspace's deployment; returns the flow run's name."""
    from prefect.deployments import run_deployment

    from .requests import check_request, ledger

    queue = ledger(ws).all()
    # submissions not queued yet, as check_request reads the queue (their classes are taken)
    pending = [SimpleNamespace(status="pending", id="a submitted request",
                               classes=s["spec"]["classes"]) for s in submissions(ws.name)
               if s["id"] not in {r.submission for r in queue}]
    check_request(ws, spec, [*queue, *pending])
    run = run_deployment(deployment_name(ws.name), timeout=0,
                         parameters={"submit": spec.model_dump()})
    return run.name
