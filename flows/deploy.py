"""The deployment of a shared workspace's request flow on a Prefect work pool, and the
automation that marks the flow runs of a dead worker crashed."""

from __future__ import annotations

import contextlib
import os

from tasks.git import git
from tasks.workspace import Workspace

ZOMBIES = "forgetting: crash flow runs whose heartbeats stopped"
HEARTBEAT_SECONDS = 30  # workers' flow runs beat this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)
# a flow run whose beats stopped this long is marked Crashed (Prefect's minimum beat is 30 s;
# tests shorten the wait through FORGET_CRASH_AFTER_SECONDS)
CRASH_AFTER_SECONDS = int(os.environ.get("FORGET_CRASH_AFTER_SECONDS", 4 * HEARTBEAT_SECONDS))
# a flow run's process: a client of its worker's preloaded flow-run server, or Prefect's
# engine in a fresh interpreter where there is none (forgetting_cli/flow_runs.py); `forget
# worker` puts its own interpreter first on the PATH
FLOW_RUN_COMMAND = "python -m forgetting_cli.flow_runs"


def deploy(ws: Workspace, pool: str, device: str | None = None, interval: int | None = None
           ) -> None:
    """The workspace's deployment ``team-requests/<name>`` on process work pool ``pool`` (made
    if missing): the flow is imported from the installed package on the worker (a module
    path entrypoint: no code storage), the workspace comes from its git remote."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.team import team_requests_flow  # (here: `forget worker` reads this module)

    async def ensure_pool() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))

    run_coro_as_sync(ensure_pool())
    crash_silent_runs()
    repo = git(ws.root, "remote", "get-url", "origin").strip()
    team_requests_flow.deploy(
        name=ws.name, work_pool_name=pool, parameters={"repo": repo, "name": ws.name},
        entrypoint_type=EntrypointType.MODULE_PATH, build=False, push=False,
        job_variables={"command": FLOW_RUN_COMMAND,
                       **({"env": {"FORGET_DEVICE": device}} if device else {})},
        interval=interval, tags=["forgetting", ws.name], print_next_steps=False,
        ignore_warnings=True)


def crash_silent_runs() -> None:
    """The automation Prefect documents for "zombie" flow runs (made once per server): a
    run whose host died stays Running until its heartbeats are missed for
    ``CRASH_AFTER_SECONDS`` (4 beats), then it is marked Crashed. (The lock is released at
    once either way; this tidies the UI.)"""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with contextlib.suppress(ValueError):
        Automation.read(name=ZOMBIES)
        return
    Automation(name=ZOMBIES, trigger=EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed"},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
        within=timedelta(seconds=CRASH_AFTER_SECONDS)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat: its host or worker died")]).create()
