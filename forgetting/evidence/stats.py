"""What every attack shares: bootstrap noise, TPR at a low FPR, and the verdict against retrain.

Each attack reports a figure where *higher means the model still holds more of the forgotten
classes* (an attack's success, a probe's accuracy, relearning speed as ``1 / steps``), with a
standard error. The verdict compares a model's figure with the retrain-from-scratch reference's:
a gap within twice their combined noise is "indistinguishable"; a positive gap beyond it means
the model still holds what retraining would not have learnt. The noise of resampling images
alone understates it: two retrains of a tiny ViT that differ only in seed gave linear-probe
figures 0.65 and 0.77 (bootstrap noise ±0.10). With several retrain seeds their spread joins
the noise (``pool``); with one, the verdict says it rests on images only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata

BOOTSTRAP = 200  # resamples: the standard error of a figure to about 5 % of itself

INDISTINGUISHABLE = "indistinguishable from retrain within its noise"


@dataclass
class Figure:
    """One attack's headline number on one model, with its noise."""

    value: float | None
    se: float | None
    metric: str = ""  # what the value is, when an attack's headline depends on its sample
    # between-model spread (std over retrain seeds): a new model is one more draw of it
    spread: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_se(stat: Callable[[np.ndarray], float], n: int, seed: int = 0,
                 reps: int = BOOTSTRAP, strata: np.ndarray | None = None) -> float | None:
    """Standard error of ``stat(positions)`` over resamples of ``n`` items (within each stratum
    when given, so a resample keeps the members / non-members balance)."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s)
                                                    for s in np.unique(strata)]
    vals = []
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        v = stat(idx)
        if v is not None and np.isfinite(v):
            vals.append(v)
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The largest TPR over thresholds whose empirical FPR is at most ``fpr`` (LiRA's reading).

    With fewer than ``1 / fpr`` non-members no false positive is allowed, so the figure is the
    TPR at zero FPR: report the non-member count beside it. Counted with sorted arrays rather
    than sklearn's ``roc_curve``: the bootstrap calls this 200 times per figure, and sklearn's
    input checks made the membership attack's noise 14 s of a 60 s test request; this is every
    threshold's point (``roc_curve``'s, before it drops collinear ones)."""
    m, nm = np.sort(np.asarray(members, float)), np.sort(np.asarray(nonmembers, float))
    t = np.unique(np.r_[m, nm])  # each distinct score as a threshold: predict "member" if >=
    tpr = (len(m) - np.searchsorted(m, t, "left")) / len(m)
    fp = (len(nm) - np.searchsorted(nm, t, "left")) / len(nm)
    ok = fp <= fpr
    return float(tpr[ok].max()) if ok.any() else 0.0  # (0, 0): the threshold above every score


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted half (``roc_auc_score``'s figure,
    without its per-call checks, for the same reason as ``tpr_at_fpr``)."""
    n1, n0 = len(members), len(nonmembers)
    ranks = rankdata(np.r_[members, nonmembers])  # average ranks: a tie counts half
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def verdict(fig: Figure, ref: Figure | None, what: str, lower_is_retained: bool = False,
            against: str = "retrain", k: float = 2.0) -> str:
    """One line: how ``fig`` stands against the reference's figure (for relearning, fewer
    steps than the reference means the model holds more), a gap within ``k`` times the
    combined noise being "indistinguishable". ``against``: "retrain", or "never-seen
    classes" (the same model's figure on classes it never trained on, whose spread between
    classes stands where a retrain's spread between seeds would)."""
    if ref is None or ref.value is None or fig.value is None:
        return f"{what}: no {against} reference to compare with"
    what = f"{what}, {fig.metric}" if fig.metric else what
    gap = (ref.value - fig.value) if lower_is_retained else fig.value - ref.value
    noise = k * float(np.sqrt((fig.se or 0.0) ** 2 + (ref.se or 0.0) ** 2
                              + (ref.spread or 0.0) ** 2))
    one = {"retrain": "one retrain seed", "partition models": "one model per group"}.get(
        against, "one never-seen class")
    seeds = "" if ref.spread is not None else f", images only: {one}"
    detail = (f"{what} {fig.value:.3f} vs {against} {ref.value:.3f} "
              f"(gap {fig.value - ref.value:+.3f}, noise ±{noise:.3f}{seeds})")
    if abs(gap) <= noise:
        return f"indistinguishable from {against} within its noise: {detail}"
    if gap > 0:
        return f"retains more than {against}: {detail}"
    return f"below {against} (a trace of its own, not knowledge): {detail}"


def passes(line: str) -> bool:
    """A verdict the gates accept: not "retains more than retrain". Being *below* retrain is
    reported but not gated: it reveals that something was removed, not what."""
    return not line.startswith("retains more")


def pool(figures: list[Figure]) -> Figure:
    """Several retrain seeds' figures as one reference: their mean, its image noise, and the
    spread between them."""
    vals = [f.value for f in figures if f.value is not None]
    if not vals:
        return Figure(None, None, figures[0].metric if figures else "")
    ses = [f.se or 0.0 for f in figures if f.value is not None]
    return Figure(float(np.mean(vals)), float(np.sqrt(np.mean(np.square(ses)) / len(vals))),
                  figures[0].metric, float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
