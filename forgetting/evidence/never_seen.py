"""The never-seen reference: classes held out of every training, as the bar instead of a retrain.

A model retrained without a person identifies that person about as well as it identifies
people it never saw. So a dataset can set a few classes aside at ingest
(``data.reference_classes``: their images go to the ``reference_train`` and
``reference_heldout`` splits, which no training reads, and they can never be forgotten) and
each attack can compare the candidate's figure on the forgotten classes with *the same
model's* figure on the never-seen ones: no retrain, no reference models, per request only the
forward passes over the reference images and the relearning runs on each never-seen class.

What it can show: whether the forgotten classes sit in the embedding like classes the model
never learnt (identification, linear probe), whether training images of the forgotten classes
still score apart from their held-out images (membership, uncalibrated: see ``membership``),
and whether they come back faster than a new class is learnt (relearning). What it cannot:
a class's own difficulty. The never-seen classes are other classes; the spread between them
joins the noise of every verdict, so a class much easier than all of them can look retained
and a much harder one forgotten. ``benchmarks/references.py`` measures how often its verdicts
agree with the retrain reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .outputs import Outputs, model_outputs
from .stats import Figure, pool

# A never-seen verdict calls a gap "indistinguishable" within this many times its noise (a
# retrain verdict: 2). Its noise holds the spread between the never-seen classes, which
# stands for how far one class's difficulty may differ from theirs, estimated from a few
# classes; at 2 the verdict missed originals whose class is harder to recognise than the
# never-seen ones. Chosen on the digits' validation split, checked on Fashion-MNIST's
# (benchmarks/results/references.json): a wrongly flagged candidate is held back, a missed
# one would reach production.
NEVER_SEEN_NOISE = 1.0


@dataclass
class NeverSeen:
    """The reference classes' images: ``train`` joins the gallery (and the probe's training
    set) like any enrolled class; ``heldout`` are their probes."""

    train: object  # ParquetImageDataset views of the reference splits (same file as the others)
    heldout: object
    classes: list[int]

    @classmethod
    def of(cls, splits: dict) -> NeverSeen | None:
        """From ``forgetting.datasets.splits``' reference views; None without reference classes."""
        tr, ho = splits.get("reference_train"), splits.get("reference_heldout")
        if tr is None or ho is None or not len(tr) or not len(ho):
            return None
        return cls(tr, ho, sorted(set(tr.labels.tolist()) & set(ho.labels.tolist())))


def joined_outputs(out: Outputs, model: torch.nn.Module, ns: NeverSeen,
                   device: torch.device) -> Outputs:
    """``out`` with the never-seen classes' images appended (training images to the gallery,
    held-out ones to the probes): one set of outputs both sides of a verdict read."""
    ref = model_outputs(model, ns.train, ns.heldout, device)
    return Outputs(torch.cat([out.train_logits, ref.train_logits]),
                   torch.cat([out.train_features, ref.train_features]),
                   np.r_[out.train_labels, ref.train_labels],
                   torch.cat([out.heldout_logits, ref.heldout_logits]),
                   torch.cat([out.heldout_features, ref.heldout_features]),
                   np.r_[out.heldout_labels, ref.heldout_labels])


def per_class_reference(run, classes: list[int]) -> dict:
    """An attack's reference figure: ``run([c])`` for each never-seen class, pooled (their
    mean, its image noise, and the spread between classes, which a verdict counts as noise)."""
    results = {int(c): run([c]) for c in classes}
    figs = [Figure(**r["figure"]) for r in results.values()]
    return {"figure": pool(figs).as_dict(),
            "per_class": {c: r["figure"]["value"] for c, r in results.items()}}
