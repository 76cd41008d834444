"""The partition reference: a few models that each never saw one group of classes, trained once.

A retrain reference trains one model from scratch per request. The partition reference splits
the classes a request may name into seeded groups (``evidence.partition_size`` classes each)
and trains one model without each group, the first time a request names a class of it: for
class c, the model of c's group is a model that never saw c, whatever was forgotten before or
after, so its figures on c stand in for a retrain's. Each attack's figure on each class of the
group is kept (``tasks.evidence.partition_reference``); a request's reference is the mean over
its classes of those per-class figures, judged by the retrain rule (a gap beyond twice the
noise).

What it can show: everything the retrain reference shows for a one-class request, with that
class's own difficulty. What it cannot: the group model also lacks the other classes of the
group, and for a request on several classes (or a sequence) the reference is a mean of
models that each lacked one group rather than one model that lacked them all.
``benchmarks/references.py`` measures how often its verdicts agree with the retrain
reference's, and what it costs.
"""

from __future__ import annotations

import numpy as np

from .stats import Figure


def groups(classes: list[int], seed: int, size: int) -> list[list[int]]:
    """``classes`` in seeded groups of ``size`` (the last may be smaller); the same for a
    workspace every time (its seed is the pretraining's). A group holds at most half the
    classes: a model trained without more than that is a model of some other, smaller task,
    and one trained without all of them has nothing to learn from."""
    size = min(size, max(1, len(classes) // 2))
    order = [int(c) for c in np.random.default_rng(3000 + seed).permutation(sorted(classes))]
    return [sorted(order[i:i + size]) for i in range(0, len(order), size)]


def group_of(parts: list[list[int]], c: int) -> list[int]:
    group = next((g for g in parts if c in g), None)
    if group is None:
        raise ValueError(f"class {c} is in no group of the partition reference (a never-seen "
                         "reference class cannot be forgotten)")
    return group


def mean_of(figures: list[Figure]) -> Figure:
    """Per-class figures as the figure of their classes together: their mean, with the noise
    of a mean of independent figures (not their spread: classes differ, that is not noise)."""
    vals = [f for f in figures if f.value is not None]
    if not vals:
        return Figure(None, None, figures[0].metric if figures else "")
    se = float(np.sqrt(sum((f.se or 0.0) ** 2 for f in vals))) / len(vals)
    return Figure(float(np.mean([f.value for f in vals])), se, vals[0].metric)


def reference(per_class: dict[int, dict[str, dict]], now: list[int], so_far: list[int]
              ) -> dict:
    """The reference of a request on ``now`` (``so_far``: every class forgotten up to it),
    shaped like a retrain model's ``measure`` result so that ``verdicts`` reads either."""
    out: dict = {"now": {}, "so_far": {}}
    attacks = next(iter(per_class.values())).keys() if per_class else ()
    for scope, classes in (("now", now), ("so_far", so_far)):
        if scope == "so_far" and sorted(so_far) == sorted(now):
            continue
        for a in attacks:
            if scope == "so_far" and a == "relearning":  # per request only, as ``measure``
                continue
            figs = [Figure(**per_class[c][a]["figure"]) for c in classes]
            out[scope][a] = {"figure": mean_of(figs).as_dict(),
                             "per_class": {int(c): f.value for c, f in zip(classes, figs,
                                                                          strict=True)}}
    return out
