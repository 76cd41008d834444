"""The bookkeeping steps of one erasure request, as Prefect tasks: start it (validate, pin the
parent model and dataset version), log its MLflow run, register its model version, apply the
gates and move the aliases, finish it in the ledger. Each is idempotent and keyed by the request
id, so a run killed between any two of them is finished by the next run, exactly once.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from forgetting.data import read_info, reference_class_names
from forgetting.gates import gate_verdict
from forgetting.preprocess import input_shape
from forgetting.report import write_report
from forgetting.requests import RequestError, validate_request

from . import lock_guard, registry
from .contracts import RequestPlan, StartFailed, TrainingSummary
from .evidence import evidence_gate, flat_figures, reference_kind
from .faults import crash_point
from .ledger import OPEN
from .model_tasks import backfill_parts, model_metadata
from .reports import markdown_summary, purge_note, report_data
from .requests import ledger
from .workspace import Workspace

AUDIT_METRICS = ("acc_f", "acc_r", "acc_o", "h_mean", "before_acc_f", "before_acc_r",
                 "before_acc_o", "per_class", "before_per_class", "mia_auc", "mia_member_rate",
                 "before_mia_auc")


@task(cache_policy=NO_CACHE)
def start_request(root: str, request_id: str) -> RequestPlan | StartFailed:
    """Mark the request running and fix what it builds on. The parent version and the dataset
    version are pinned at the first attempt: a retry builds on the same model and data, and a
    dataset that changed in between is an error, not a silent mix."""
    ws = Workspace.at(root)
    led = ledger(ws)
    req = led.get(request_id)
    c = registry.client(ws)
    info = read_info(ws.dataset)
    # pinned in the ledger, or, if the run that registered this request's version died
    # before the ledger reached the remote (another host), in that version's tags
    registered = registry.version_for_request(c, request_id)
    pinned = int(registry.version_tags(c, registered)["parent_version"]) if registered else None
    parent = req.parent_version or pinned or registry.alias_version(c, "production")
    if parent is None:
        raise RuntimeError("no production model: run `forget pretrain` first")
    earlier_names = registry.forgotten_in(c, parent)
    try:
        if req.dataset_version and req.dataset_version != info.content_hash:
            raise RequestError(
                f"{request_id} was started on dataset {req.dataset_version[:12]}, the dataset "
                f"is now {info.content_hash[:12]} (replaced outside `forget`): request it "
                "again on this one")
        forget = validate_request(info.class_names, req.classes, earlier_names,
                                  reference_class_names(ws.dataset))
    except RequestError as e:
        led.update(request_id, expect=OPEN, status="failed", error=str(e))
        get_run_logger().error(f"{request_id} failed validation: {e}")
        return StartFailed(error=str(e))
    led.update(request_id, expect=OPEN, status="running", attempts=req.attempts + 1,
               parent_version=parent, dataset_version=info.content_hash)
    return RequestPlan(parent=parent, forget=forget,
                       earlier=[info.class_index(n) for n in earlier_names],
                       earlier_names=earlier_names, classes=req.classes, shots=req.shots,
                       method=req.method or ws.config().forget.method,
                       dataset_version=info.content_hash,
                       index=len(registry.chain(c, parent)) - 1,
                       image_shape=list(input_shape(ws.config().model)))


def _flat_metrics(metrics: dict, retrain: dict | None, summary: TrainingSummary) -> dict:
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    flat.update({f"class_acc/{k}": v for k, v in metrics["per_class"].items()})
    flat.update({f"retrain_{k}": v for k, v in (retrain or {}).items()
                 if not isinstance(v, dict)})
    ev = metrics.get("evidence") or {}
    for who, prefix in (("original", "before_"), ("after", "")):
        flat.update(flat_figures(ev.get(who), prefix))
    flat.update(flat_figures((retrain or {}).get("evidence"), "retrain_"))
    flat.update(flat_figures(ev.get("partition"), "partition_"))
    flat.update(groups_kept=len(summary.kept_groups), adapter_bytes=summary.adapter_bytes,
                train_seconds=summary.train_seconds)
    return flat


@task(cache_policy=NO_CACHE)
def log_run(root: str, request_id: str, plan: RequestPlan, summary: TrainingSummary,
            metrics: dict, retrain: dict | None) -> str:
    """The request's one finished MLflow run: params, metrics, and its model: the adapter with
    its lineage (re-used if a crashed attempt already finished it; an unfinished one is
    deleted and redone)."""
    lock_guard.check()
    ws = Workspace.at(root)
    cfg = ws.config()
    adapter = ws.adapter_dir(request_id)
    c = registry.client(ws)
    registry.with_backoff(lambda: backfill_parts(ws, plan.parent),  # older versions
                          "storing the parts of earlier versions")
    params = {"classes": json.dumps(plan.classes), "shots": plan.shots,
              "method": plan.method, "parent_version": plan.parent,
              "request_index": plan.index, "dataset_version": plan.dataset_version,
              "evidence_reference": reference_kind(metrics),
              **{f"forget.{k}": v for k, v in cfg.forget.model_dump().items()}}
    work = ws.work_dir(request_id)
    return registry.with_backoff(lambda: registry.log_request_run(
        ws, request_id, params, _flat_metrics(metrics, retrain, summary),
        [work / "metrics.json"], adapter, summary.adapter_sha256,
        registry.lineage(c, plan.parent), tuple(plan.image_shape),
        model_metadata(cfg.model), on_started=lambda: crash_point("in-log-run")),
        "logging the run")


@task(cache_policy=NO_CACHE)
def register_version(root: str, request_id: str, run_id: str, plan: RequestPlan,
                     summary: TrainingSummary) -> int:
    lock_guard.check()
    ws = Workspace.at(root)
    tags = {"parent_version": plan.parent, "adapter": ws.rel(ws.adapter_dir(request_id)),
            "adapter_sha256": summary.adapter_sha256, "dataset_version": plan.dataset_version,
            "forgotten": json.dumps(plan.gone)}
    return registry.with_backoff(lambda: registry.register(ws, request_id, run_id,
                                                           ws.adapter_dir(request_id), tags),
                                 "registering the model")


@task(cache_policy=NO_CACHE)
def apply_gates(root: str, request_id: str, version: int, plan: RequestPlan, metrics: dict,
                retrain: dict | None = None) -> str | None:
    """``candidate`` follows the newest version; ``production`` moves only if the gates pass
    (the metric gates, and the evidence gates when ``gates.evidence`` names attacks) and
    production is still the model this request built on. Returns the gate's verdict."""
    lock_guard.check()
    ws = Workspace.at(root)
    c = registry.client(ws)
    gates = ws.config().gates
    reasons = [r for r in (gate_verdict(metrics, gates, plan.gone),
                           evidence_gate(metrics, retrain, gates.evidence)) if r]
    gate = "; ".join(reasons) or None
    prod = registry.alias_version(c, "production")
    if gate is None and prod not in (plan.parent, version):  # moved outside this pipeline
        gate = (f"production moved from v{plan.parent} to v{prod} while {request_id} ran; "
                "not promoted (promote it by hand if it should replace that version)")
    registry.with_backoff(lambda: registry.set_alias(c, "candidate", version,
                                                     f"request {request_id}"), "moving candidate")
    if gate is None:
        registry.with_backoff(lambda: registry.set_alias(
            c, "production", version, f"request {request_id} passed the gates"),
            "moving production")
    c.set_model_version_tag(c.model_name, str(version), "gate", gate or "passed")
    return gate


@task(cache_policy=NO_CACHE)
def finish_request(root: str, request_id: str, version: int, run_id: str,
                   summary: TrainingSummary,
                   metrics: dict, retrain: dict | None, gate: str | None) -> str:
    """The ledger entry says done (or failed_gate) with the audit metrics."""
    status = "done" if gate is None else "failed_gate"
    ledger(Workspace.at(root)).update(
        request_id, expect=OPEN, status=status, error=None, model_version=version,
        mlflow_run_id=run_id, adapter_sha256=summary.adapter_sha256, gate=gate or "passed",
        metrics={k: v for k, v in metrics.items() if k in AUDIT_METRICS}
        | {f"retrain_{k}": retrain.get(k) for k in ("acc_r", "mia_auc", "seconds") if retrain})
    return status


@task(cache_policy=NO_CACHE)
def publish_report(root: str, request_id: str, plan: RequestPlan, version: int, run_id: str,
                   summary: TrainingSummary, metrics: dict, retrain: dict | None,
                   gate: str | None) -> str:
    """Write ``data/reports/<request>/``, log it to the MLflow run, show it in Prefect."""
    ws = Workspace.at(root)
    req = ledger(ws).get(request_id)
    data = report_data(ws, req, summary, metrics, retrain, version, gate, plan.earlier_names)
    if note := purge_note(ws, plan.earlier_names):  # Acc_o of purged classes: last measured
        data = data.model_copy(update={"purged_note": note})
    out = write_report(data, ws.report_dir(request_id)).parent
    c = registry.client(ws)
    registry.with_backoff(lambda: c.log_artifacts(run_id, str(out), "report"),
                          "logging the report")
    # keyed by workspace too: the workspaces of a team stack share its Prefect server
    create_markdown_artifact(markdown=markdown_summary(data),
                             key=f"{ws.name}-{request_id.lower()}",
                             description=f"Erasure request {request_id} of {ws.name}")
    return str(out)
