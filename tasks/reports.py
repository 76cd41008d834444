"""A request's report: gathered from what the request's steps stored, rendered by
``forgetting.report`` into ``data/reports/<request>/`` (DVC-tracked, logged to MLflow by the
``publish_report`` step). No Prefect here: ``forget report`` re-renders without a server."""

from __future__ import annotations

from forgetting.report import ReportData, sections, to_markdown

from .contracts import TrainingSummary
from .evidence import evidence_verdicts, reference_kind
from .ledger import Request
from .requests import ledger
from .workspace import Workspace

KEYS = ("acc_f", "acc_r", "acc_o", "h_mean")


def report_data(ws: Workspace, req: Request, summary: TrainingSummary, metrics: dict,
                retrain: dict | None, model_version: int | None, gate: str | None,
                earlier: list[str]) -> ReportData:
    per_class = {n: {"before": metrics["before_per_class"].get(n),
                     "after": metrics["per_class"].get(n),
                     "retrain": (retrain or {}).get("per_class", {}).get(n)}
                 for n in metrics["before_per_class"]}
    mia = {label: {k: src.get(f"{p}mia_{k}") for k in ("auc", "member_rate", "attack_auc")}
           for label, src, p in (("original", metrics, "before_"), ("after forgetting", metrics, ""),
                                 ("retrain from scratch", retrain or {}, ""))
           if src.get(f"{p}mia_member_rate") is not None}
    return ReportData.model_validate({
        "request": req.model_dump(include={"id", "classes", "shots", "method", "reason",
                                           "requester", "created_at"}),
        "metrics": {"before": {k: metrics.get(f"before_{k}") for k in KEYS},
                    "after": {k: metrics.get(k) for k in KEYS},
                    "retrain": {k: retrain.get(k) for k in KEYS} if retrain else None},
        "per_class": per_class, "mia": mia, "evidence": evidence_section(metrics, retrain),
        "groups": {"norms": summary.group_norms, "kept": summary.kept_groups,
                   "threshold": ws.config().forget.group_threshold},
        "history": summary.history, "selected_epoch": summary.selected_epoch,
        "versions": {"dataset_version": req.dataset_version, "parent_version": req.parent_version,
                     "model_version": model_version, "adapter_sha256": summary.adapter_sha256,
                     "adapter_bytes": summary.adapter_bytes,
                     "adapter_path": ws.rel(ws.adapter_dir(req.id))},
        "gate": gate or "passed", "earlier": earlier,
        "retrain_seconds": (retrain or {}).get("seconds"),
        "train_seconds": summary.train_seconds,
    })


def evidence_section(metrics: dict, retrain: dict | None) -> dict | None:
    """Per attack and scope: the three models' figures (the candidate's on the never-seen
    classes as the third, when they are the reference) and the candidate's verdict."""
    from forgetting.evidence import REFERENCES, TITLES

    ev = metrics.get("evidence") or {}
    if not ev.get("after"):
        return None
    kind = reference_kind(metrics)
    column = REFERENCES[kind]
    models = {"before (parent)": ev.get("original"), "after forgetting": ev["after"]}
    if kind == "retrain":
        models[column] = (retrain or {}).get("evidence")
    elif kind == "partition":
        models[column] = ev["partition"]
    lines = evidence_verdicts(metrics, retrain)
    attacks = []
    for name, title in TITLES.items():
        if name not in ev["after"]["now"]:
            continue
        entry = {"name": name, "title": title, "lower_is_retained": name == "relearning"}
        for scope in ("now", "so_far"):
            if name in ev["after"].get(scope, {}):
                figures = {k: ((m or {}).get(scope) or {}).get(name, {}).get("figure")
                           for k, m in models.items()}
                if kind == "never-seen":  # the candidate's own figure on them, every scope
                    figures[column] = ev["after"]["reference"].get(name, {}).get("figure")
                entry[scope] = {
                    "figures": figures,
                    "verdict": lines.get("after", {}).get(scope, {}).get(name),
                    # the same attack on the parent: its power on this class, here
                    "parent_verdict": lines.get("original", {}).get(scope, {}).get(name)}
        attacks.append(entry)
    seconds = {k: {a: round(s, 2) for a, s in (m or {}).get("seconds", {}).items()}
               for k, m in models.items() if m}
    return {"attacks": attacks, "seconds": seconds, "reference": kind, "column": column,
            "reference_classes": ev["after"].get("reference_class_names", []),
            "partition_groups": (ev.get("partition") or {}).get("groups", [])}


def markdown_summary(data: ReportData) -> str:
    """The report without its images (a Prefect artifact cannot show local files)."""
    data = data.model_dump()
    secs = [s for s in sections(data) if not (isinstance(s[2], str) and s[2].endswith(".png"))]
    title = f"Erasure request {data['request']['id']}: {', '.join(data['request']['classes'])}"
    return to_markdown(title, secs) + ("\nPlots: the MLflow run's `report/` artifacts and "
                                       f"`data/reports/{data['request']['id']}/`.")


def purge_note(ws: Workspace, classes: list[str]) -> str | None:
    """For reports that involve purged classes: their Acc_o can no longer be measured, so the
    last value measured before each purge is shown, marked as such."""
    notes = []
    for r in ledger(ws).all():
        p = r.purge
        if p is None or p.cache_objects_removed < 0 or not set(r.classes) & set(classes):
            continue
        acc = "-" if p.last_acc_o is None else f"{100 * p.last_acc_o:.2f} %"
        notes.append(f"{', '.join(r.classes)} ({r.id}): images purged on {p.at} (dataset "
                     f"{p.dataset_version_after[:12]}); last Acc_o measured before the purge: "
                     f"{acc} (model v{p.last_acc_o_model_version}).")
    return " ".join(notes) or None
