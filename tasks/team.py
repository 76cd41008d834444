"""A workspace shared by several hosts through the team stack (``forget stack``).

The hosts share nothing but servers: the workspace repository on a git server, its data and
adapters on the DVC remote (S3), runs and versions on the MLflow server, submissions and flow
runs on the Prefect server, and the run lock on PostgreSQL. What keeps a request processed
exactly once and in order across hosts:

- **One writer at a time.** The run lock is a PostgreSQL advisory lock keyed by the workspace
  name (``FORGET_LOCK_URL``), held by a session: when its holder dies, even by SIGKILL, its
  connection closes and PostgreSQL releases the lock (TCP keepalives end the session of a host
  that vanished without closing it).
- **Every holder starts from the remote's state** (``sync``, right after taking the lock) and
  pushes each commit at once (``git config forgetting.push true``): the adapter's commit
  reaches the git remote before its MLflow run exists, so a version's adapter can always be
  pulled by the next holder instead of being trained again.
- **Submissions are Prefect flow runs** of the workspace's deployment, with the request as a
  parameter. A flow run, once it holds the lock, queues every submission not queued yet, in
  submission order (``import_submissions``), then processes the whole queue in order: which
  worker's run gets the lock first does not change the order.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from .dvc import _dvc, _git
from .workspace import Workspace

log = logging.getLogger("forgetting")

LOCK_URL = "FORGET_LOCK_URL"  # postgresql://… of the stack (``forget stack env``)
WORKER_DIR = "FORGET_WORKER_DIR"  # a worker's own folder, where it clones workspaces
FLOW_NAME = "team-requests"


class StackSettingsMissing(RuntimeError):
    """A shared workspace used without the stack's client settings."""


def attached(root: Path) -> bool:
    """The workspace pushes to a shared git remote (``forget stack attach`` or a worker's
    clone)."""
    res = subprocess.run(["git", "config", "--get", "forgetting.push"], cwd=root,
                         capture_output=True, text=True)
    return res.stdout.strip() == "true"


def is_worker_clone(root: Path) -> bool:
    res = subprocess.run(["git", "config", "--get", "forgetting.worker"], cwd=root,
                         capture_output=True, text=True)
    return res.stdout.strip() == "true"


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(url: str, name: str, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock ``name``; ``timeout`` as ``locks.run_lock``.
    Raises ``TimeoutError`` when it is still held elsewhere after ``timeout`` seconds."""
    import psycopg2

    con = psycopg2.connect(url, application_name=f"forget: {what}"[:60], connect_timeout=10,
                           keepalives=1, keepalives_idle=10, keepalives_interval=5,
                           keepalives_count=3)
    con.autocommit = True
    key = _key(name)
    try:
        with con.cursor() as cur:
            start = time.monotonic()
            said = False
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                if timeout == 0 or (timeout > 0 and time.monotonic() - start > timeout):
                    raise TimeoutError(name)
                if not said:
                    log.info(f"waiting for the run in progress on another host to finish "
                             f"before {what} (PostgreSQL lock {name!r})")
                    said = True
                time.sleep(1)
        yield
    finally:
        con.close()  # ends the session: PostgreSQL releases the lock


def sync(root: Path, targets: list[str] | None = None) -> None:
    """Bring the clone to the remote's latest state, before the lock holder changes anything.
    A worker's clone (its own, made by ``checkout``) is reset: what a killed run left there
    uncommitted is dropped, and the next run redoes it from the shared state. A user's
    workspace is only fast-forwarded, so nothing of theirs is lost. ``targets``: pull only
    these DVC-tracked paths (default: all)."""
    _git(root, "fetch", "-q", "origin")
    if not _git(root, "ls-remote", "--heads", "origin", "main").strip():
        return  # nothing pushed yet (attach pushes first)
    if is_worker_clone(root):
        _git(root, "reset", "-q", "--hard", "origin/main")
    else:
        try:
            _git(root, "merge", "-q", "--ff-only", "origin/main")
        except RuntimeError as e:
            raise RuntimeError(f"{root} has commits that are not on the git remote and the "
                               f"remote moved on; push or rebase them first ({e})") from None
    from .dvc import _repo

    with _repo(root) as repo:
        if targets is not None:
            targets = [str(root / t) for t in targets if (root / f"{t}.dvc").exists()]
        if targets or (targets is None and any((root / p).exists() for p in (
                "data/dataset.parquet.dvc", "data/models.dvc"))):
            repo.pull(targets, force=is_worker_clone(root))


def push(root: Path) -> None:
    """``git push`` the current branch to ``origin``'s main (called after each commit)."""
    try:
        _git(root, "push", "-q", "origin", "HEAD:refs/heads/main")
    except RuntimeError:  # someone pushed meanwhile (outside the lock): rebase once
        _git(root, "pull", "-q", "--rebase", "origin", "main")
        _git(root, "push", "-q", "origin", "HEAD:refs/heads/main")


def attach(ws: Workspace, git_url: str, s3_url: str, endpoint: str,
           access_key: str | None, secret_key: str | None) -> None:
    """Point a workspace at the stack: DVC's default remote on S3 (endpoint committed, keys in
    DVC's ``--local`` config only), git's ``origin`` on the git server, push everything."""
    root = ws.root
    _dvc(root, "remote", "add", "-f", "-d", "stack", s3_url)
    _dvc(root, "remote", "modify", "stack", "endpointurl", endpoint)
    _dvc(root, "remote", "default", "--local", "stack")  # over ``forget init``'s local remote
    for option, value in (("access_key_id", access_key), ("secret_access_key", secret_key)):
        if not value:
            continue
        try:  # "--": a generated secret may start with "-"; an error never shows the value
            _dvc(root, "remote", "modify", "--local", "stack", option, "--", value)
        except RuntimeError as e:
            raise RuntimeError(str(e).replace(value, "***")) from None
    from .dvc import commit

    commit(root, [".dvc/config"], "DVC remote: the team stack's S3")
    remotes = _git(root, "remote").split()
    _git(root, "remote", "set-url" if "origin" in remotes else "add", "origin", git_url)
    _git(root, "config", "forgetting.push", "true")
    if any((root / "data").glob("*.dvc")):  # data tracked before the attach
        _dvc(root, "push")
    push(root)


def checkout(repo_url: str, name: str) -> Path:
    """A worker's own clone of workspace ``name`` (under ``$FORGET_WORKER_DIR``), made once."""
    base = Path(os.environ.get(WORKER_DIR) or Path.cwd()).resolve()
    root = base / "workspaces" / name
    if not (root / ".git").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", repo_url, str(root)], check=True,
                       capture_output=True, text=True)
        for k in ("forgetting.push", "forgetting.worker"):
            _git(root, "config", k, "true")
    return root


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

    from flows.team import team_requests_flow

    async def ensure_pool() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))

    run_coro_as_sync(ensure_pool())
    crash_silent_runs()
    repo = _git(ws.root, "remote", "get-url", "origin").strip()
    team_requests_flow.deploy(
        name=ws.name, work_pool_name=pool, parameters={"repo": repo, "name": ws.name},
        entrypoint_type=EntrypointType.MODULE_PATH, build=False, push=False,
        job_variables={"env": {"FORGET_DEVICE": device}} if device else None,
        interval=interval, tags=["forgetting", ws.name], print_next_steps=False,
        ignore_warnings=True)


ZOMBIES = "forgetting: crash flow runs whose heartbeats stopped"
HEARTBEAT_SECONDS = 30  # workers' flow runs beat this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)


def crash_silent_runs() -> None:
    """The automation Prefect documents for "zombie" flow runs (made once per server): a
    run whose host died stays Running until its heartbeats are missed for 4 beats, then it
    is marked Crashed. (The lock is released at once either way; this tidies the UI.)"""
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
        within=timedelta(seconds=4 * HEARTBEAT_SECONDS)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat: its host or worker died")]).create()


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
