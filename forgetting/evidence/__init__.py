"""Evidence that a model forgot: attacks beyond the logits, each against the retrain reference.

One module per attack, each reading a model's ``Outputs`` (logits and embeddings of the
training and held-out images) and returning a dict with a headline ``figure`` (value and
standard error):
- ``membership``: calibrated per-example membership inference (offline LiRA), TPR at low FPR;
- ``linear_probe``: are the forgotten classes still linearly separable in the embedding?
- ``identification``: k-NN / centroid identification in embedding space (face-recognition view);
- ``relearning``: fine-tuning steps for a few images to bring the classes back.
``measure`` runs them on one model for this request's classes ("now") and, in a sequence, for
every class forgotten so far ("so_far"); ``verdicts`` puts a model's figures beside its
reference's: a model retrained without the classes, or the same model's figures on classes
it never trained on (``never_seen.py``), or models trained once without a group of classes
each (``partition.py``). Pure PyTorch/scikit-learn: the pipeline adds
storage and logging.
"""

from __future__ import annotations

import time

import torch

from ..config import EvidenceConfig
from .identification import identification
from .membership import References, membership, train_references
from .never_seen import NEVER_SEEN_NOISE, NeverSeen, joined_outputs, per_class_reference
from .outputs import Outputs, model_outputs
from .probe import linear_probe
from .relearning import relearning
from .stats import INDISTINGUISHABLE, Figure, passes, pool, verdict

ATTACKS = ("membership", "linear_probe", "identification", "relearning")
TITLES = {"membership": "membership inference",  # LiRA, or uncalibrated: its metric says
          "linear_probe": "linear probe, mean probability on held-out images",
          "identification": "k-NN identification accuracy",
          "relearning": "relearning, steps to Acc_f 50 %"}
PROBES = ATTACKS[:3]  # cheap once the outputs exist: also run on every class forgotten so far

__all__ = ["ATTACKS", "INDISTINGUISHABLE", "PROBES", "REFERENCES", "TITLES", "NeverSeen",
           "Outputs", "References", "measure", "model_outputs", "passes", "pooled",
           "train_references", "verdicts"]


def _attack(name: str, out: Outputs, model, train_ds, heldout_ds, classes: list[int],
            device: torch.device, cfg: EvidenceConfig, refs: References | None) -> dict:
    if name == "membership":  # without reference models: uncalibrated (the never-seen bar)
        return membership(out, refs, classes)
    if name == "linear_probe":
        return linear_probe(out, classes)
    if name == "identification":
        return identification(out, classes, k=cfg.knn_k)
    return relearning(model, train_ds, heldout_ds, classes, device, cfg.relearn_shots,
                      cfg.relearn_max_steps, cfg.relearn_lr, cfg.relearn_repeats)


def measure(model: torch.nn.Module, train_ds, heldout_ds, classes: list[int], device: torch.device,
            cfg: EvidenceConfig, refs: References | None = None,
            so_far: list[int] | None = None, never_seen: NeverSeen | None = None) -> dict:
    """``cfg.attacks`` on one model: ``{"now": {attack: result}, "so_far": {...},
    "seconds": {attack: s}}``. ``so_far``: every class forgotten up to now, this request's
    included (the probes only; relearning is per request). ``never_seen``: the reference
    classes join the gallery and the probes, and each attack's figure on them, per class and
    pooled, is added as ``"reference"`` (the bar of ``verdicts(..., "never-seen")``)."""
    if never_seen is not None and refs is not None:
        raise ValueError("the never-seen reference reads uncalibrated membership scores: the "
                         "reference models' outputs do not cover its images")
    t0 = time.perf_counter()
    out = model_outputs(model, train_ds, heldout_ds, device)
    train_all, heldout_all = train_ds, heldout_ds
    if never_seen is not None:
        out = joined_outputs(out, model, never_seen, device)
        train_all = train_ds.joined(never_seen.train)
        heldout_all = heldout_ds.joined(never_seen.heldout)
    result: dict = {"now": {}, "so_far": {}, "seconds": {"outputs": time.perf_counter() - t0}}
    if never_seen is not None:
        result["reference"], result["reference_classes"] = {}, never_seen.classes
    for name in cfg.attacks:
        t0 = time.perf_counter()
        result["now"][name] = _attack(name, out, model, train_ds, heldout_ds, classes, device,
                                      cfg, refs)
        if so_far and sorted(so_far) != sorted(classes) and name in PROBES:
            result["so_far"][name] = _attack(name, out, model, train_ds, heldout_ds, so_far,
                                             device, cfg, refs)
        if never_seen is not None:
            result["reference"][name] = per_class_reference(
                lambda cs, name=name: _attack(name, out, model, train_all, heldout_all, cs,
                                              device, cfg, None), never_seen.classes)
        result["seconds"][name] = time.perf_counter() - t0
    return result


REFERENCES = {"retrain": "retrain", "never-seen": "never-seen classes",
              "partition": "partition models"}


def verdicts(model: dict, retrain: dict | None, reference: str = "retrain"
             ) -> dict[str, dict[str, str]]:
    """One line per attack and scope: ``{"now": {attack: line}, "so_far": {...}}``, against
    ``retrain``: the retrain model's figures, or the partition models' (``partition.reference``,
    the same rule), or (``reference="never-seen"``) the model's own figures on the never-seen
    classes (``measure(..., never_seen=...)``)."""
    out: dict[str, dict[str, str]] = {}
    for scope in ("now", "so_far"):
        lines = {}
        for name, res in model.get(scope, {}).items():
            if reference == "never-seen":
                ref = (model.get("reference") or {}).get(name)
            else:
                ref = ((retrain or {}).get(scope) or {}).get(name)
            lines[name] = verdict(Figure(**res["figure"]),
                                  Figure(**ref["figure"]) if ref else None, TITLES[name],
                                  lower_is_retained=name == "relearning",
                                  against=REFERENCES[reference],
                                  k=NEVER_SEEN_NOISE if reference == "never-seen" else 2.0)
        if lines:
            out[scope] = lines
    return out


def pooled(results: list[dict]) -> dict:
    """``measure`` results of several retrain seeds as one reference (``stats.pool``); the
    other fields are the first seed's, with ``seeds`` added."""
    if len(results) == 1:
        return results[0]
    out: dict = {"seconds": results[0]["seconds"], "seeds": len(results)}
    for scope in ("now", "so_far"):
        out[scope] = {}
        for name, first in results[0].get(scope, {}).items():
            figs = [Figure(**r[scope][name]["figure"]) for r in results]
            out[scope][name] = {**first, "figure": pool(figs).as_dict(),
                                "seed_values": [f.value for f in figs]}
    return out
