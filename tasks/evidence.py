"""The attacks of ``forgetting.evidence`` inside a request: their reference models trained once
per dataset version and kept in the workspace's state, the figures of the original, candidate
and retrain models, the verdicts the report shows and the optional gates read."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from filelock import FileLock

from forgetting.config import Config

from .workspace import Workspace

if TYPE_CHECKING:  # forgetting.evidence loads torch and scikit-learn: only where attacks run,
    import torch  # so that `forget report` (which reads this module's verdicts) stays fast

    from forgetting.evidence import References


def _key(cfg: Config, dataset_version: str) -> str:
    e = cfg.evidence
    parts = (dataset_version, cfg.model.model_dump_json(), cfg.pretrain.model_dump_json(),
             f"{e.reference_models}-{e.reference_epochs}-{cfg.threads}-{cfg.deterministic}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def references(ws: Workspace, sp: dict, dataset_version: str, dev: torch.device
               ) -> References | None:
    """The membership attack's reference models' outputs, trained at the first request on a
    dataset version and then read from ``.forgetting/evidence/`` (a file lock makes a second
    process, e.g. the retrain reference's Dask worker, wait rather than train them twice)."""
    from forgetting.evidence import References, train_references

    cfg = ws.config()
    if "membership" not in cfg.evidence.attacks or cfg.evidence_reference == "never-seen":
        return None  # the never-seen reference reads uncalibrated scores: no models to train
    path = ws.state / "evidence" / f"references-{_key(cfg, dataset_version)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return References.load(path)
        names = sp["train"].info.class_names
        refs = train_references(cfg.model, len(names), sp["train"], sp["val"],
                                sp["val"].joined(sp["test"]), cfg.pretrain, dev,
                                cfg.evidence.reference_models, cfg.evidence.reference_epochs)
        refs.save(path)
        return refs


def measure_model(ws: Workspace, model, sp: dict, forget: list[int], earlier: list[int],
                  dataset_version: str, dev: torch.device) -> dict | None:
    """``cfg.evidence.attacks`` on one model, for this request's classes and (in a sequence)
    for every class forgotten so far; None when the attacks are off."""
    from forgetting.data import DataError
    from forgetting.datasets import reference_splits
    from forgetting.evidence import NeverSeen, measure

    cfg = ws.config()
    if not cfg.evidence.attacks:
        return None
    never_seen = None
    if cfg.evidence_reference == "never-seen":
        never_seen = NeverSeen.of(reference_splits(ws.dataset, cfg.model))
        if never_seen is None:
            raise DataError("evidence.reference: never-seen, but the dataset has no reference "
                            "classes: set data.reference_classes and run `forget ingest` "
                            "(a new dataset version, so a new workspace for a trained model)")
    out = measure(model, sp["train"], sp["val"].joined(sp["test"]), forget, dev, cfg.evidence,
                  references(ws, sp, dataset_version, dev), so_far=earlier + forget,
                  never_seen=never_seen)
    if never_seen is not None:
        names = sp["train"].info.class_names
        out["reference_class_names"] = [names[c] for c in never_seen.classes]
    return out


def reference_kind(metrics: dict) -> str:
    """What the verdicts of a request's evidence compare with: its record says (the
    candidate's figures on never-seen classes are stored beside its own when it used them)."""
    return "never-seen" if ((metrics.get("evidence") or {}).get("after") or {}).get(
        "reference") else "retrain"


def evidence_verdicts(metrics: dict, retrain: dict | None) -> dict:
    """``{"original": {scope: {attack: line}}, "after": ...}`` against the request's
    reference: the retrain model, or each model's own figures on the never-seen classes."""
    from forgetting.evidence import verdicts

    ev = metrics.get("evidence") or {}
    ref = (retrain or {}).get("evidence")
    return {who: verdicts(ev[who], ref, reference_kind(metrics))
            for who in ("original", "after") if ev.get(who)}


def evidence_gate(metrics: dict, retrain: dict | None, attacks: list[str]) -> str | None:
    """The reasons the evidence gates (``gates.evidence``) refuse the candidate, if any."""
    if not attacks:
        return None
    from forgetting.evidence import passes

    lines = evidence_verdicts(metrics, retrain).get("after", {}).get("now", {})
    bad = [f"{a}: {lines[a]}" if a in lines else f"{a}: not measured" for a in attacks
           if a not in lines or not passes(lines[a])]
    return "; ".join(f"evidence {b}" for b in bad) or None


def flat_figures(ev: dict | None, prefix: str) -> dict[str, float]:
    """MLflow metrics: each attack's headline figure (``<prefix>evidence/<attack>``)."""
    out = {}
    for scope, results in (ev or {}).items():
        if scope not in ("now", "so_far", "reference"):
            continue
        for name, res in results.items():
            if (v := res["figure"]["value"]) is not None:
                tail = {"now": "", "so_far": "_so_far", "reference": "_never_seen"}[scope]
                out[f"{prefix}evidence/{name}{tail}"] = float(v)
    for name, s in ((ev or {}).get("seconds") or {}).items():
        out[f"{prefix}evidence_seconds/{name}"] = float(s)
    return out
