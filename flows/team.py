"""The flow a worker runs for a workspace shared through the team stack (``tasks.shared``).

Deployed per workspace (``forget stack deploy``) to a process work pool; a worker on any host
runs it in its own clone of the workspace repository. A flow run submitted with a request
(``submit``) and a scheduled one do the same: queue what was submitted, then process the whole
queue in order under the stack's lock.
"""

from __future__ import annotations

import logging

from prefect import flow

# (a team run is a request run: the flow-run server does what those need before forking)
from flows.process_requests import before_forking_runs, process_requests_flow  # noqa: F401
from tasks import environment
from tasks.dvc import quiet_staging_hints
from tasks.git import checkout
from tasks.submissions import FLOW_NAME


@flow(name=FLOW_NAME, log_prints=True)
def team_requests_flow(repo: str, name: str, submit: dict | None = None) -> list[dict]:
    """``repo``: the workspace's git URL; ``name``: its ``workspace.name``; ``submit``: the
    request this flow run carries (read back by whichever run queues it, in order)."""
    # the library's progress lines ("waiting for the run in progress on another host", what
    # was queued, pushed) into the flow run's logs, as `forget` shows them on a terminal
    logging.getLogger("forgetting").setLevel(logging.INFO)
    quiet_staging_hints()  # (in the worker's log too)
    root = checkout(repo, name)
    environment.apply(root / ".forgetting")
    return process_requests_flow(str(root))
