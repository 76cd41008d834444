"""A request's evidence as a report: Markdown and HTML with matplotlib plots.

Input is one JSON-able dict (``report.json``, kept next to the report so it can be rendered
again anywhere); keys are documented in ``write_report``. Both formats are rendered from the
same list of sections so they never disagree.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ROWS = (("acc_f", "Acc_f (forgotten now)"), ("acc_r", "Acc_r (retained)"),
        ("acc_o", "Acc_o (forgotten earlier)"), ("h_mean", "H-Mean"))


MIA_NOTE = ("A logistic-regression attack on loss and confidence is fitted to tell the retained "
            "classes' training images from their held-out images (its own AUC: last column), "
            "then applied to the forgotten classes. A model that forgot should look like the "
            "retrain-from-scratch model: AUC near 0.5 between their training and held-out "
            "images. 'Called member' is only telling when the attack itself is strong.")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def plot_group_norms(norms: dict, kept: list[int], threshold: float, path: Path) -> None:
    blocks = sorted(int(b) for b in norms)
    vals = [norms[str(b)] if str(b) in norms else norms[b] for b in blocks]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([str(b) for b in blocks], vals,
           color=["tab:green" if b in kept else "tab:gray" for b in blocks])
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"drop threshold {threshold}")
    ax.set(xlabel="transformer block (LoRA group)", ylabel="group L2 norm (log)", yscale="log",
           title="LoRA group norms (green: kept in the adapter)")
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
        ax.bar(xs, [100 * (per_class[n].get(s) or 0) for n in names], width, label=s)
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
            a.plot(ep, [h.get(k, 0.0) for h in history], marker="o", label=label)
    a.set(xlabel="epoch", ylabel="mean per step", yscale="symlog", title="Training losses")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.legend(fontsize=8)
    for k, label in (("h_mean", "H-Mean"), ("acc_r", "Acc_r"), ("acc_f", "Acc_f")):
        b.plot(ep, [h["val_raw"][k] for h in history], marker="o", label=label)
    if selected_epoch is not None:
        b.axvline(selected_epoch, color="gray", ls=":", label="selected epoch")
    b.set(xlabel="epoch", ylim=(-0.02, 1.02), title="Validation (stored adapter)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sections(d: dict) -> list[tuple[str, list[str] | None, list[list[str]] | str]]:
    """(heading, table header or None, rows or a paragraph / image file)."""
    req, m, v = d["request"], d["metrics"], d["versions"]
    cols = [c for c in ("before", "after", "retrain") if m.get(c)]
    out: list = [("Request", None, [
        ["id", req["id"]], ["classes", ", ".join(req["classes"])],
        ["shots", _fmt(req.get("shots")) if req.get("shots") else "all images"],
        ["method", req.get("method", "")], ["requester", req.get("requester", "")],
        ["reason", req.get("reason", "")], ["gate", d.get("gate") or "-"]])]
    rows = [[label, *(_pct(m[c].get(k)) for c in cols)] for k, label in ROWS]
    note = d.get("purged_note")
    out.append(("Metrics (test split, %)", ["metric", *cols], rows))
    if note:
        out.append(("Purge", None, note))
    mia = d.get("mia") or {}
    if mia:
        out.append(("Membership inference on the forgotten images",
                    ["model", "AUC train vs held-out (0.5 = never seen)", "called member %",
                     "attack AUC on retained"],
                    [[k, _fmt(r.get("auc")), _pct(r.get("member_rate")), _fmt(r.get("attack_auc"))]
                     for k, r in mia.items() if r]))
        out.append(("How to read it", None, MIA_NOTE))
    g = d["groups"]
    out.append(("LoRA groups", None, [
        ["kept blocks", ", ".join(map(str, g["kept"])) or "none"],
        ["kept / total", f"{len(g['kept'])} / {len(g['norms'])}"],
        ["adapter", f"{v.get('adapter_bytes', 0) / 1024:.1f} KiB, sha256 "
                    f"{v.get('adapter_sha256', '')}"]]))
    out.append(("Versions", None, [[k, _fmt(v.get(k))] for k in (
        "dataset_version", "parent_version", "model_version", "adapter_path")]))
    out.append(("Per-class accuracy (%)", ["class", *cols],
                [[n, *(_pct(pc.get(c)) for c in cols)] for n, pc in d["per_class"].items()]))
    for f, title in (("group_norms.png", "Group norms per block"),
                     ("per_class.png", "Per-class accuracy"), ("training.png", "Training curves")):
        out.append((title, None, f))
    return out


def to_markdown(title: str, secs) -> str:
    lines = [f"# {title}", ""]
    for head, header, body in secs:
        lines += [f"## {head}", ""]
        if isinstance(body, str):
            lines += [f"![{head}]({body})" if body.endswith(".png") else body, ""]
            continue
        header = header or ["field", "value"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in body]
        lines.append("")
    return "\n".join(lines)


def to_html(title: str, secs) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
             "</style></head><body>", f"<h1>{e(title)}</h1>"]
    for head, header, body in secs:
        parts.append(f"<h2>{e(head)}</h2>")
        if isinstance(body, str):
            parts.append(f"<img src='{e(body)}' alt='{e(head)}'>" if body.endswith(".png")
                         else f"<p>{e(body)}</p>")
            continue
        parts.append("<table>")
        parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header or ["field", "value"])
                     + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in body]
        parts.append("</table>")
    return "\n".join([*parts, "</body></html>"])


def write_report(d: dict, out_dir: str | Path) -> Path:
    """Render ``d`` to ``out_dir`` (report.md, report.html, report.json, three PNGs).

    Keys: ``request`` (id, classes, shots, method, reason, requester), ``metrics``
    (before/after/retrain -> acc_f, acc_r, acc_o, h_mean), ``per_class`` (class -> before/
    after/retrain), ``mia`` (model -> auc, member_rate), ``groups`` (norms, kept, threshold),
    ``history`` (training epochs), ``selected_epoch``, ``versions``, ``gate``, ``forgotten``,
    ``earlier``, optional ``purged_note``. Written to a temp folder, then renamed into place.
    """
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plot_group_norms(d["groups"]["norms"], d["groups"]["kept"], d["groups"]["threshold"],
                     tmp / "group_norms.png")
    plot_per_class(d["per_class"], d["request"]["classes"], d.get("earlier", []),
                   tmp / "per_class.png")
    plot_training(d["history"], d.get("selected_epoch"), tmp / "training.png")
    title = f"Erasure request {d['request']['id']}: {', '.join(d['request']['classes'])}"
    secs = sections(d)
    (tmp / "report.md").write_text(to_markdown(title, secs))
    (tmp / "report.html").write_text(to_html(title, secs))
    (tmp / "report.json").write_text(json.dumps(d, indent=2, default=str))  # order matters
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out / "report.md"


def render_again(report_json: str | Path, out_dir: str | Path, **changes) -> Path:
    """Re-render a stored report (``forget report``), optionally with updated fields."""
    d = json.loads(Path(report_json).read_text()) | changes
    return write_report(d, out_dir)
