"""The attacks of ``forgetting.evidence`` inside a request: their reference models trained once
per dataset version and kept in the workspace's state, the figures of the original, candidate
and retrain models, the verdicts the report shows and the optional gates read."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from filelock import FileLock

from forgetting.config import Config
from forgetting.files import write_json_atomic

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


def partition_reference(ws: Workspace, sp: dict, forget: list[int], earlier: list[int],
                        dataset_version: str, dev: torch.device) -> dict:
    """The partition reference of a request (``forgetting.evidence.partition``): every
    attack's figures on each class from the model of its group, that group's model trained
    from scratch without it the first time a request needs it, then read from
    ``.forgetting/evidence/partition-<key>/`` (a file lock per group, as ``references``)."""
    import time

    from forgetting.data import reference_class_names
    from forgetting.evidence import measure
    from forgetting.evidence.partition import group_of, groups, reference
    from forgetting.pretrain import retrain_baseline

    cfg = ws.config()
    names = sp["train"].info.class_names
    held_out = set(reference_class_names(ws.dataset))
    parts = groups([i for i, n in enumerate(names) if n not in held_out], cfg.pretrain.seed,
                   cfg.evidence.partition_size)
    folder = (ws.state / "evidence" /
              f"partition-{_key(cfg, dataset_version)}-{cfg.evidence.partition_size}")
    folder.mkdir(parents=True, exist_ok=True)
    per_class: dict[int, dict] = {}
    trained_s = 0.0
    heldout = sp["val"].joined(sp["test"])
    for group in {tuple(group_of(parts, c)) for c in earlier + forget}:
        path = folder / f"group-{'-'.join(map(str, group))}.json"
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                t0 = time.perf_counter()
                res = retrain_baseline(cfg.model, len(names), sp["train"], sp["val"],
                                       cfg.pretrain, dev,
                                       [i for i in range(len(names)) if i not in group],
                                       progress=False)
                refs = references(ws, sp, dataset_version, dev)
                figs = {c: measure(res.model, sp["train"], heldout, [c], dev, cfg.evidence,
                                   refs)["now"] for c in group}
                write_json_atomic(path, {"classes": [names[c] for c in group],
                                         "seconds": time.perf_counter() - t0,
                                         "figures": {str(c): f for c, f in figs.items()}})
                trained_s += time.perf_counter() - t0
            stored = json.loads(path.read_text())
        per_class.update({int(c): f for c, f in stored["figures"].items()})
    out = reference(per_class, forget, earlier + forget)
    out["groups"] = [[names[c] for c in g] for g in parts]
    out["seconds"] = {"training": trained_s}  # the groups this request trained (most: none)
    return out


def reference_kind(metrics: dict) -> str:
    """What the verdicts of a request's evidence compare with: its record says (the
    candidate's figures on never-seen classes are stored beside its own when it used them,
    the partition models' beside both)."""
    ev = metrics.get("evidence") or {}
    if ev.get("partition"):
        return "partition"
    return "never-seen" if (ev.get("after") or {}).get("reference") else "retrain"


def evidence_verdicts(metrics: dict, retrain: dict | None) -> dict:
    """``{"original": {scope: {attack: line}}, "after": ...}`` against the request's
    reference: the retrain model, the partition models, or each model's own figures on the
    never-seen classes."""
    from forgetting.evidence import verdicts

    ev = metrics.get("evidence") or {}
    kind = reference_kind(metrics)
    ref = ev["partition"] if kind == "partition" else (retrain or {}).get("evidence")
    return {who: verdicts(ev[who], ref, kind) for who in ("original", "after") if ev.get(who)}


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
