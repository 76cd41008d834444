"""When a candidate model may replace production: the one gate used by the request flow and by
``dvc repro`` alike, so both build the next request on the same model.

A mean over retained classes hides a class that was wrecked (measured on Fashion-MNIST: a
4-shot request cut ``pullover`` from 80 % to 60 % while mean Acc_r fell 1.6 points), so the
worst single retained class is bounded too.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import GateConfig


def class_drops(before: dict[str, float], after: dict[str, float], gone: Iterable[str]
                ) -> list[tuple[str, float, float, float]]:
    """(class, before, after, drop) for every retained class, largest drop first."""
    gone = set(gone)
    rows = [(c, before[c], after[c], before[c] - after[c]) for c in before
            if c not in gone and c in after]
    return sorted(rows, key=lambda r: (-r[3], r[0]))


def gate_verdict(metrics: dict, gates: GateConfig, gone: Iterable[str]) -> str | None:
    """None when the candidate may go to production, else every reason it may not.

    ``metrics``: ``acc_f``, ``acc_r``, ``before_acc_r``, ``per_class``, ``before_per_class``
    (held-out accuracies of the candidate and of its parent); ``gone``: the classes forgotten
    by this request and by earlier ones (their drop is the point, not damage).
    """
    reasons = []
    if metrics["acc_f"] > gates.max_acc_f:
        reasons.append(f"Acc_f {metrics['acc_f']:.3f} > {gates.max_acc_f}")
    drop = metrics["before_acc_r"] - metrics["acc_r"]
    if drop > gates.max_acc_r_drop:
        reasons.append(f"Acc_r drop {drop:.3f} > {gates.max_acc_r_drop}")
    drops = class_drops(metrics["before_per_class"], metrics["per_class"], gone)
    if drops and drops[0][3] > gates.max_class_drop:
        bad = [r for r in drops if r[3] > gates.max_class_drop]
        listed = ", ".join(f"{c} {b:.3f} -> {a:.3f}" for c, b, a, _ in bad[:5])
        reasons.append(f"{len(bad)} retained class{'es' if len(bad) > 1 else ''} dropped by "
                       f"more than {gates.max_class_drop}: {listed}")
    return "; ".join(reasons) or None
