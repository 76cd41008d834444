"""Process pending erasure requests, strictly in arrival order, each exactly once.

Per request: rebuild the production model from DVC-tracked files -> prototypes -> GS-LoRA(++)
training -> evaluation -> DVC-track the adapter -> MLflow run + model -> registered version
(keyed by request id) -> ``candidate`` alias -> ``production`` alias if the gates pass.
Each step is idempotent, so a run that crashed part-way is finished by the next run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from forgetting.train import RequestError, validate_request
from tasks import registry
from tasks.faults import crash_point
from tasks.ledger import file_lock
from tasks.model_tasks import (
    dataset_info,
    evaluate_request,
    forgotten_in,
    materialize,
    prototypes,
    retrain_reference,
    train_adapter,
)
from tasks.recovery import recover
from tasks.reports import markdown_summary, purge_note, report_data, write_request_report
from tasks.requests import ledger
from tasks.versioning import track
from tasks.workspace import Workspace

AUDIT_METRICS = ("acc_f", "acc_r", "acc_o", "h_mean", "before_acc_f", "before_acc_r",
                 "before_acc_o", "per_class", "mia_auc", "mia_member_rate", "before_mia_auc")


def gate_verdict(metrics: dict, max_acc_f: float, max_acc_r_drop: float) -> str | None:
    """None when the candidate may go to production, else the reason it may not."""
    reasons = []
    if metrics["acc_f"] > max_acc_f:
        reasons.append(f"Acc_f {metrics['acc_f']:.3f} > {max_acc_f}")
    drop = metrics["before_acc_r"] - metrics["acc_r"]
    if drop > max_acc_r_drop:
        reasons.append(f"Acc_r drop {drop:.3f} > {max_acc_r_drop}")
    return "; ".join(reasons) or None


@flow(name="process-request", log_prints=True)
def process_request(root: str, request_id: str) -> dict:
    ws = Workspace.at(root)
    log = get_run_logger()
    led = ledger(ws)
    req = led.get(request_id)
    cfg = ws.config()
    c = registry.client(ws)
    info = dataset_info(ws)
    # the parent is fixed at the first attempt, so a retried request builds on the same model
    parent = req.parent_version or registry.alias_version(c, "production")
    if parent is None:
        raise RuntimeError("no production model: run `forget pretrain` first")
    earlier_names = forgotten_in(ws, parent)
    try:
        forget = validate_request(info.class_names, req.classes, earlier_names)
    except RequestError as e:
        led.update(request_id, status="failed", error=str(e))
        log.error(f"{request_id} failed validation: {e}")
        return {"status": "failed", "error": str(e)}
    earlier = [info.class_index(n) for n in earlier_names]
    req = led.update(request_id, status="running", attempts=req.attempts + 1,
                     parent_version=parent, dataset_version=info.content_hash)
    crash_point("after-start")

    ckpt = materialize(root, parent, request_id)
    protos = (prototypes(root, ckpt, request_id, forget, earlier, req.shots)
              if req.method == "gs-lora++" and cfg.forget.prototypes.enabled else None)
    summary = train_adapter(root, ckpt, request_id, forget, earlier, req.shots, req.method,
                            protos)
    metrics = evaluate_request(root, ckpt, request_id, forget, earlier, summary["adapter_sha256"])
    crash_point("after-train")
    retrain = (retrain_reference(root, request_id, forget, earlier)
               if cfg.evidence.retrain_baseline else None)
    track(root, [ws.rel(ws.adapters)], f"adapter {request_id}")
    crash_point("after-adapter-tracked")

    from forgetting.lora import apply_adapter
    from forgetting.model import load_checkpoint

    model = apply_adapter(load_checkpoint(ckpt)[0], ws.adapter_dir(request_id),
                          summary["adapter_sha256"])
    work = ws.work_dir(request_id)
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    flat.update({f"class_acc/{k}": v for k, v in metrics["per_class"].items()})
    flat.update({f"retrain_{k}": v for k, v in (retrain or {}).items() if not isinstance(v, dict)})
    flat.update(groups_kept=len(summary["kept_groups"]), adapter_bytes=summary["adapter_bytes"],
                train_seconds=summary["train_seconds"])
    run_id = registry.with_backoff(lambda: registry.log_request_run(
        ws, request_id,
        {"classes": json.dumps(req.classes), "shots": req.shots, "method": req.method,
         "parent_version": parent, "dataset_version": info.content_hash,
         **{f"forget.{k}": v for k, v in cfg.forget.model_dump().items()}},
        flat, [ws.adapter_dir(request_id), work / "metrics.json", work / "train.json"], model,
        (cfg.model.in_chans, info.image_size, info.image_size)), "logging the run")
    tags = {"parent_version": parent, "adapter": ws.rel(ws.adapter_dir(request_id)),
            "adapter_sha256": summary["adapter_sha256"], "dataset_version": info.content_hash,
            "forgotten": json.dumps(earlier_names + req.classes)}
    crash_point("after-mlflow-run")
    version = registry.with_backoff(lambda: registry.register(ws, request_id, run_id, tags),
                                    "registering the model")
    crash_point("after-register")
    gate = gate_verdict(metrics, cfg.gates.max_acc_f, cfg.gates.max_acc_r_drop)
    registry.set_alias(c, "candidate", version, f"request {request_id}")
    if gate is None:
        registry.set_alias(c, "production", version, f"request {request_id} passed the gates")
    c.set_model_version_tag(registry.MODEL_NAME, str(version), "gate", gate or "passed")
    crash_point("after-production-alias")
    status = "done" if gate is None else "failed_gate"
    final = dict(status=status, error=None, model_version=version, mlflow_run_id=run_id,
                 adapter_sha256=summary["adapter_sha256"], gate=gate or "passed",
                 metrics={k: v for k, v in metrics.items() if k in AUDIT_METRICS}
                 | {f"retrain_{k}": retrain.get(k) for k in ("acc_r", "mia_auc") if retrain})
    # the report before the ledger says done: a request marked done always has its report
    data = report_data(ws, req.model_copy(update=final), summary, metrics, retrain, version, gate,
                       earlier_names)
    if note := purge_note(ws, earlier_names):  # Acc_o of purged classes: last measured value
        data["purged_note"] = note
    report = Path(write_request_report(root, data)).parent
    registry.with_backoff(lambda: c.log_artifacts(run_id, str(report), "report"),
                          "logging the report")
    led.update(request_id, **final)
    crash_point("after-ledger-done")
    track(root, [ws.rel(ws.requests), ws.rel(ws.reports)], f"request {request_id}: {status}")
    shutil.rmtree(ws.work / request_id, ignore_errors=True)
    create_markdown_artifact(markdown=markdown_summary(data), key=f"request-{request_id.lower()}",
                             description=f"Erasure request {request_id}")
    log.info(f"{request_id}: v{version} {status} (Acc_f {metrics['acc_f']:.3f}, "
             f"Acc_r {metrics['acc_r']:.3f})")
    return {"status": status, "model_version": version, **flat}


@flow(name="process-requests", log_prints=True)
def process_requests_flow(root: str) -> list[dict]:
    """All pending requests in arrival order, under the run lock (one runner at a time)."""
    ws = Workspace.at(root)
    led = ledger(ws)
    out = []
    registry.check_reachable(ws)
    with file_lock(ws.lock):  # ledger writes (request add) use another lock and go on
        recover(root)
        for req in led.pending():
            try:
                out.append({"id": req.id, **process_request(root, req.id)})
            except Exception as e:  # stays queued, with the reason; later ones wait (order)
                led.update(req.id, status="pending", error=f"{type(e).__name__}: {e}"[:2000])
                raise
    if not out:
        get_run_logger().info("no pending requests")
    return out
