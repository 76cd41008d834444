"""The report's plots (matplotlib, files only): group norms, per-class accuracy, training.

One colour per meaning, the same in every report.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

COLOURS = {"before": "tab:blue", "after": "tab:orange", "retrain": "tab:green",
           "ce_r": "tab:blue", "ce_f": "tab:red", "ce_o": "tab:orange", "structure": "tab:gray",
           "h_mean": "black", "acc_r": "tab:blue", "acc_f": "tab:red"}


def plot_group_norms(norms: dict, kept: list[int], threshold: float, path: Path) -> None:
    """Log-scale bars; a dropped group (norm 0 or under the threshold) is drawn at a floor,
    hatched and labelled with its norm, so it does not vanish from the plot."""
    blocks = sorted(int(b) for b in norms)
    vals = [float(norms[str(b)] if str(b) in norms else norms[b]) for b in blocks]
    floor = threshold / 100
    fig, ax = plt.subplots(figsize=(5, 3))
    bars = ax.bar([str(b) for b in blocks], [max(v, floor) for v in vals],
                  color=["tab:green" if b in kept else "tab:gray" for b in blocks],
                  hatch=[None if b in kept else "//" for b in blocks])
    for bar, b, v in zip(bars, blocks, vals, strict=True):
        if b not in kept:
            ax.annotate("dropped\n" + ("norm 0" if v == 0 else f"{v:.1e}"),
                        (bar.get_x() + bar.get_width() / 2, max(v, floor)),
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"drop threshold {threshold}")
    ax.set(xlabel="transformer block (LoRA group)", ylabel="group L2 norm (log)", yscale="log",
           title="LoRA group norms (green: kept, hatched: dropped)")
    ax.set_ylim(bottom=floor / 2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(per_class: dict, forgotten: list[str], earlier: list[str], path: Path) -> None:
    names = list(per_class)
    series = [s for s in ("before", "after", "retrain")
              if any(per_class[n].get(s) is not None for n in names)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names)), 3.2))
    for i, s in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * (per_class[n].get(s) or 0) for n in names], width, label=s,
               color=COLOURS[s])
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    for lbl in ax.get_xticklabels():
        if lbl.get_text() in forgotten:
            lbl.set_color("tab:red")
        elif lbl.get_text() in earlier:
            lbl.set_color("tab:orange")
    ax.set(ylabel="test accuracy %", ylim=(0, 125), yticks=range(0, 101, 20),
           title="Per-class accuracy (red: forgotten now, orange: earlier)")
    ax.legend(fontsize=8, ncol=len(series), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(history: list[dict], selected_epoch: int | None, path: Path) -> None:
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k, label in (("ce_r", "CE retained"), ("ce_f", "CE forgotten"),
                     ("ce_o", "CE earlier-forgotten"), ("structure", "group-sparse term")):
        if any(h.get(k) for h in history):  # ce_o: only when earlier classes were guarded
            a.plot(ep, [h.get(k, 0.0) for h in history], marker="o", label=label,
                   color=COLOURS[k])
    a.set(xlabel="epoch", ylabel="mean per step", yscale="symlog", title="Training losses")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.legend(fontsize=8)
    for k, label in (("h_mean", "H-Mean"), ("acc_r", "Acc_r"), ("acc_f", "Acc_f")):
        b.plot(ep, [h["val_raw"][k] for h in history], marker="o", label=label,
               color=COLOURS[k])
    if selected_epoch is not None:
        b.axvline(selected_epoch, color="gray", ls=":", label="selected epoch")
    b.set(xlabel="epoch", ylim=(-0.02, 1.02), title="Validation (stored adapter)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)




def plot_evidence(title: str, figures: dict[str, dict | None], verdict: str, path: Path,
                  lower_is_retained: bool = False, reference: str = "retrain") -> None:
    """One attack: the original, the candidate and the reference (retrain, or the candidate
    on the never-seen classes) as bars with their noise (2 standard errors; the reference's
    band adds the spread between its seeds or classes), and the verdict as the title, so a
    reader sees at once whether the candidate sits in the band."""
    rows = [(k, f) for k, f in figures.items() if f and f.get("value") is not None]
    fig, ax = plt.subplots(figsize=(5.5, 0.55 * len(rows) + 1.4))
    colours = {"before (parent)": COLOURS["before"], "after forgetting": COLOURS["after"],
               reference: COLOURS["retrain"]}
    for i, (label, f) in enumerate(rows):
        ax.barh(i, f["value"], color=colours.get(label, "tab:gray"),
                xerr=2 * (f.get("se") or 0.0), capsize=4)
    ref = figures.get(reference)
    if ref and ref.get("value") is not None:
        band = 2 * float(np.hypot(ref.get("se") or 0.0, ref.get("spread") or 0.0))
        ax.axvspan(ref["value"] - band, ref["value"] + band, color=COLOURS["retrain"],
                   alpha=0.15, label=f"{reference} ± noise")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    short = verdict.split(":")[0]
    ax.set_title(f"{title}\n{short}", fontsize=9)
    metric = next((f.get("metric") for _, f in rows if f.get("metric")), "")
    ax.set_xlabel((metric or "figure") + (" (lower: the class returns faster)"
                                          if lower_is_retained else " (higher: more retained)"),
                  fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
