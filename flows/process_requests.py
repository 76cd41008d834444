"""Process pending erasure requests, strictly in arrival order, each exactly once.

Per request: start it (pin parent model and dataset) -> rebuild the parent from DVC-tracked
files -> prototypes -> GS-LoRA(++) training -> evaluation -> retrain reference -> DVC-track the
adapter -> MLflow run -> registered version -> gates and aliases -> report -> ledger done.
Each step is an idempotent task keyed by the request id, so a run that crashed part-way is
finished by the next run.
"""

from __future__ import annotations

import contextlib
import importlib
import os

from prefect import flow, get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks import registry
from tasks.contracts import StartFailed
from tasks.faults import crash_point
from tasks.git import attached
from tasks.ledger import OPEN, StaleRequest
from tasks.locks import run_lock
from tasks.model_tasks import (
    evaluate_request,
    export_production_task,
    materialize,
    prototypes,
    retrain_reference,
    train_adapter,
)
from tasks.recovery import recover, remove_scratch
from tasks.request_steps import (
    apply_gates,
    finish_request,
    log_run,
    publish_report,
    register_version,
    start_request,
)
from tasks.requests import ledger
from tasks.submissions import import_submissions
from tasks.versioning import track
from tasks.workspace import Workspace

# what a request imports on first use, not at import (the CLI's quick commands never need
# them): DVC's repository API and the graph and git libraries under it, the report's plots,
# MLflow's model flavour and its SQL store (a local workspace's tracking). A process that
# forks runs (forgetting_cli/flow_runs.py) imports them once; each run forked without them
# imported them again (1.5 CPU-s a run here, 0.8 more for the SQL store)
FIRST_USE_IMPORTS = ("dvc.repo", "dvc.repo.index", "networkx", "scmrepo.git",
                     "forgetting.plots", "mlflow.pyfunc", "mlflow.store.tracking.sqlalchemy_store",
                     # the attacks' (forgetting.evidence.probe.balanced_logistic)
                     "sklearn.linear_model", "sklearn.metrics", "sklearn.pipeline",
                     "sklearn.preprocessing")


def before_forking_runs() -> None:
    """What a process that forks runs does once, so that no run repeats it: the first-use
    imports, and MLflow's map of installed distributions (``tasks.registry``)."""
    for name in FIRST_USE_IMPORTS:
        importlib.import_module(name)
    registry.prime_requirements_map()


@flow(name="process-request", flow_run_name="{request_id}", log_prints=True)
def process_request(root: str, request_id: str) -> dict:
    ws = Workspace.at(root)
    cfg = ws.config()
    plan = start_request(root, request_id)
    if isinstance(plan, StartFailed):
        return plan.model_dump()
    crash_point("after-start")
    forget, earlier = plan.forget, plan.earlier

    # the retrain reference needs nothing from the forgetting run: it can train beside it
    retrain_job = (retrain_reference.submit(root, request_id, forget, earlier)
                   if cfg.trains_retrain and cfg.evidence.parallel else None)
    parent = materialize(root, plan.parent, request_id)
    protos = (prototypes(root, parent, request_id, forget, earlier, plan.shots)
              if plan.method == "gs-lora++" and cfg.forget.prototypes.enabled else None)
    summary = train_adapter(root, parent, request_id, forget, earlier, plan.shots,
                            plan.method, protos, plan.index, plan.parent)
    metrics = evaluate_request(root, parent, request_id, forget, earlier,
                               summary.adapter_sha256)
    crash_point("after-train")
    retrain = (retrain_job.result() if retrain_job is not None
               else retrain_reference(root, request_id, forget, earlier)
               if cfg.trains_retrain else None)
    track(root, [ws.rel(ws.adapters)], f"adapter {request_id}")
    crash_point("after-adapter-tracked")

    run_id = log_run(root, request_id, plan, summary, metrics, retrain)
    crash_point("after-mlflow-run")
    version = register_version(root, request_id, run_id, plan, summary)
    crash_point("after-register")
    gate = apply_gates(root, request_id, version, plan, metrics, retrain)
    crash_point("after-production-alias")
    if gate is None:
        export_production_task(root, version)
    # the report before the ledger says done: a request marked done always has its report
    publish_report(root, request_id, plan, version, run_id, summary, metrics, retrain, gate)
    status = finish_request(root, request_id, version, run_id, summary, metrics, retrain, gate)
    crash_point("after-ledger-done")
    track(root, [ws.rel(ws.requests), ws.rel(ws.reports)], f"request {request_id}: {status}",
          extra=["params.yaml"])
    remove_scratch(root, request_id)
    get_run_logger().info(f"{request_id}: v{version} {status} (Acc_f {metrics['acc_f']:.3f}, "
                          f"Acc_r {metrics['acc_r']:.3f})")
    return {"status": status, "model_version": version, "acc_f": metrics["acc_f"],
            "acc_r": metrics["acc_r"], "gate": gate or "passed"}


class TaskRunners:
    """Where ``.submit``-ted tasks of a request run: Prefect's default threads; with
    ``evidence.parallel``, a Dask worker process (the retrain reference): the cluster at
    ``evidence.dask_address``, or a one-worker local cluster started once per queue (its
    start-up, about 10 s here, is paid once, not per request)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._local: str | None = None

    def __call__(self, evidence) -> TaskRunner:
        if not evidence.parallel:
            return ThreadPoolTaskRunner()
        from prefect_dask import DaskTaskRunner

        if evidence.dask_address:
            return DaskTaskRunner(address=evidence.dask_address)
        if self._local is None:
            from distributed import LocalCluster

            cluster = self._stack.enter_context(LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None))
            self._local = cluster.scheduler_address
        return DaskTaskRunner(address=self._local)

    def close(self) -> None:
        self._stack.close()


@flow(name="process-requests", log_prints=True)
def process_requests_flow(root: str) -> list[dict]:
    """All pending requests in arrival order, under the run lock (one runner at a time)."""
    ws = Workspace.at(root)
    led = ledger(ws)
    out = []
    registry.check_reachable(ws)
    runners = TaskRunners()
    with run_lock(ws, "processing requests"), contextlib.closing(runners):
        recover(root)
        if attached(ws.root) and os.environ.get("PREFECT_API_URL"):
            import_submissions(ws)  # submitted through the stack's Prefect server
        for req in led.pending():
            try:
                out.append({"id": req.id, **process_request.with_options(
                    task_runner=runners(ws.config().evidence))(root, req.id)})
            except StaleRequest:  # cancelled after this run listed the queue
                get_run_logger().info(f"{req.id} was cancelled meanwhile; skipped")
            except Exception as e:  # stays queued, with the reason; later ones wait (order)
                led.update(req.id, expect=OPEN, status="pending",
                           error=f"{type(e).__name__}: {e}"[:2000])
                raise
    if not out:
        get_run_logger().info("no pending requests")
    return out
