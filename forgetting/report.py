"""A request's evidence as a report: Markdown and HTML, with the plots of ``forgetting.plots``.

Input is one ``ReportData`` (``report.json``, kept next to the report so it can be rendered
again anywhere, validated when read back). Both formats are rendered from the same list of
sections so they never disagree. Rendering again reuses the stored plots, so ``forget report``
does not load matplotlib.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

from .files import fsync_path, fsync_tree, temp_sibling, write_atomic
from .schema import Strict


class ReportRequest(Strict):
    id: str
    classes: list[str]
    shots: int | None = None
    method: str | None = None
    reason: str = ""
    requester: str = ""
    created_at: str | None = None


class Scores(Strict):
    acc_f: float | None = None
    acc_r: float | None = None
    acc_o: float | None = None
    h_mean: float | None = None


class ReportMetrics(Strict):
    """Test-split scores of the parent, the candidate and the retrain reference."""

    before: Scores
    after: Scores
    retrain: Scores | None = None


class ClassScores(Strict):
    before: float | None = None
    after: float | None = None
    retrain: float | None = None


class Groups(Strict):
    norms: dict[int, float]
    kept: list[int]
    threshold: float


class Versions(Strict):
    dataset_version: str | None = None
    parent_version: int | None = None
    model_version: int | None = None
    adapter_sha256: str | None = None
    adapter_bytes: int | None = None
    adapter_path: str | None = None


class ReportData(Strict):
    """Everything a request's report shows. ``evidence``: per attack its name, title and, per
    scope ("now", "so_far"), the three models' figures and the verdict, plus seconds
    (``tasks.reports.evidence_section``); ``history``: the training epochs (``forget_classes``);
    ``mia``: per model its auc, member_rate and attack_auc."""

    request: ReportRequest
    metrics: ReportMetrics
    per_class: dict[str, ClassScores]
    mia: dict[str, dict[str, float | None]] = {}
    evidence: dict | None = None
    groups: Groups
    history: list[dict]
    selected_epoch: int | None = None
    versions: Versions
    gate: str = "passed"
    earlier: list[str] = []
    train_seconds: float | None = None
    retrain_seconds: float | None = None
    purged_note: str | None = None

PLOTS = ("group_norms.png", "per_class.png", "training.png")
EVIDENCE_PLOTS = tuple(f"evidence_{a}.png" for a in ("membership", "linear_probe",
                                                     "identification", "relearning"))

ROWS = (("acc_f", "Acc_f (forgotten now)"), ("acc_r", "Acc_r (retained)"),
        ("acc_o", "Acc_o (forgotten earlier)"), ("h_mean", "H-Mean"))


MIA_NOTE = ("A logistic-regression attack on loss and confidence is fitted to tell the retained "
            "classes' training images from their held-out images (its own AUC: last column), "
            "then applied to the forgotten classes. A model that forgot should look like the "
            "retrain-from-scratch model: AUC near 0.5 between their training and held-out "
            "images. 'Called member' is only telling when the attack itself is strong.")


EVIDENCE_NOTE = (
    "Each attack asks whether the candidate still holds the forgotten classes in a way a model "
    "retrained without them would not. Membership inference: LiRA-calibrated, members are the "
    "classes' training images, non-members their held-out images. Linear probe: a logistic "
    "regression on the frozen embeddings, forgotten classes vs the rest. Identification: "
    "k-NN over the embeddings of every training image (a recognition system's gallery). "
    "Relearning: fine-tuning steps for a few images to bring held-out Acc_f back to 50 %. "
    "Values ± twice their noise (images resampled; with several retrain seeds, their spread). "
    "'Indistinguishable from retrain' is the pass; 'retains more than retrain' is a finding. "
    "The last column judges the parent, which still knows the classes, by the same attack and "
    "reference: where even the parent is not flagged, the attack cannot tell this class from "
    "the reference here (an easy class that any model identifies, say), and the candidate's "
    "pass is no evidence of forgetting.")


def figure_text(f: dict | None) -> str:
    """An evidence figure as "value ± 2 noise" (image noise and, for a pooled retrain
    reference, the spread between its seeds): the reports' and the benchmarks' one format."""
    if not f or f.get("value") is None:
        return "-"
    noise = 2 * ((f.get("se") or 0.0) ** 2 + (f.get("spread") or 0.0) ** 2) ** 0.5
    return f"{f['value']:.3f} ± {noise:.3f}"


NEVER_SEEN_NOTE = (
    "The reference here is the never-seen classes ({classes}): set aside at import, never "
    "trained on, never forgotten. Each attack's figure on the forgotten classes is compared with "
    "the same model's figure on them, with their spread between classes as part of the noise: "
    "no model was retrained. It shows whether the forgotten classes now sit like classes the "
    "model never learnt; it cannot tell a class much easier or harder than the never-seen ones "
    "from one that was (not) forgotten. Membership scores are uncalibrated (no reference "
    "models): their chance level, 0.5, is what the never-seen classes give.")

PARTITION_NOTE = (
    "The reference here is the partition models: the classes a request may name were split "
    "into groups ({groups}) and one model per group was trained from scratch without it, the "
    "first time a request named one of its classes. Each class is judged against the model of "
    "its group, which never saw it, by the retrain rule (a gap beyond twice the noise). It "
    "shows what a retrain shows for that class; for several classes its figure is the mean of "
    "per-class figures from different models, and each group model also lacks the other "
    "classes of its group.")


def _reference_column(ev: dict) -> str:
    return ev.get("column") or "retrain"


def evidence_rows(ev: dict, scope: str) -> list[list[str]]:
    rows = []
    cols = ("before (parent)", "after forgetting", _reference_column(ev))
    for a in ev["attacks"]:
        if scope not in a:
            continue
        f, line = a[scope]["figures"], a[scope].get("verdict") or "-"
        parent = a[scope].get("parent_verdict")
        power = "-" if parent is None else (
            "flagged: the attack sees the class" if parent.startswith("retains more")
            else "not flagged: a pass says nothing")
        metric = next((x["metric"] for x in f.values() if x and x.get("metric")), "")
        rows.append([a["title"] + (f" ({metric})" if metric else ""),
                     *(figure_text(f.get(k)) for k in cols), line.split(":")[0], power])
    return rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _secs(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _role(name: str, forgotten: list[str], earlier: list[str]) -> str:
    return "forgotten now" if name in forgotten else ("earlier" if name in earlier
                                                      else "retained")


def per_class_rows(d: dict, cols: list[str]) -> list[list[str]]:
    """Retained classes first, the largest drop at the top; then the forgotten ones."""
    forgotten, earlier = d["request"]["classes"], d.get("earlier", [])
    order = {"retained": 0, "forgotten now": 1, "earlier": 2}

    def change(pc: dict) -> float:
        b, a = pc.get("before"), pc.get("after")
        return 0.0 if b is None or a is None else a - b

    items = sorted(d["per_class"].items(), key=lambda kv: (
        order[_role(kv[0], forgotten, earlier)], change(kv[1]), kv[0]))
    return [[n, _role(n, forgotten, earlier), *(_pct(pc.get(c)) for c in cols),
             _signed(change(pc))] for n, pc in items]


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


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
    ev = d.get("evidence")
    if ev:
        column = _reference_column(ev)
        header = ["attack", "before (parent)", "after forgetting", column, "verdict",
                  "the parent, same attack"]
        out.append((f"Evidence against the {column} reference (this request's classes)",
                    header, evidence_rows(ev, "now")))
        if any("so_far" in a for a in ev["attacks"]):
            out.append(("Evidence on every class forgotten so far", header,
                        evidence_rows(ev, "so_far")))
        out.append(("How to read the evidence", None, EVIDENCE_NOTE))
        if ev.get("reference") == "never-seen":
            out.append(("What the never-seen reference shows", None, NEVER_SEEN_NOTE.format(
                classes=", ".join(ev.get("reference_classes") or []))))
        if ev.get("reference") == "partition":
            out.append(("What the partition reference shows", None, PARTITION_NOTE.format(
                groups="; ".join(", ".join(g) for g in ev.get("partition_groups") or []))))
        out.append(("Seconds per attack", ["model", *sorted({k for s in ev["seconds"].values()
                                                              for k in s})],
                    [[m, *(_secs(s.get(k)) for k in sorted({k for s in ev["seconds"].values()
                                                            for k in s}))]
                     for m, s in ev["seconds"].items()]))
    g = d["groups"]
    out.append(("LoRA groups", None, [
        ["kept blocks", ", ".join(map(str, g["kept"])) or "none"],
        ["kept / total", f"{len(g['kept'])} / {len(g['norms'])}"],
        ["adapter", f"{v.get('adapter_bytes', 0) / 1024:.1f} KiB, sha256 "
                    f"{v.get('adapter_sha256', '')}"]]))
    train_s, retrain_s = d.get("train_seconds"), d.get("retrain_seconds")
    cost = [["forgetting (training)", _secs(train_s)], ["retrain from scratch", _secs(retrain_s)]]
    if train_s and retrain_s:
        cost.append(["speed-up", f"{retrain_s / train_s:.1f}x"])
    out.append(("Cost (seconds)", None, cost))
    out.append(("Versions", None, [[k, _fmt(v.get(k))] for k in (
        "dataset_version", "parent_version", "model_version", "adapter_path")]))
    out.append(("Per-class accuracy (%, retained classes with the largest drop first)",
                ["class", "role", *cols, "change"], per_class_rows(d, cols)))
    for f, title in (("group_norms.png", "Group norms per block"),
                     ("per_class.png", "Per-class accuracy"), ("training.png", "Training curves")):
        out.append((title, None, f))
    for a in (ev or {}).get("attacks", []):
        out.append((f"Evidence: {a['title']}", None, f"evidence_{a['name']}.png"))
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


REPORT_FILES = {"report.md", "report.html", "report.json", *PLOTS, *EVIDENCE_PLOTS}
MARKER = ".forgetting-report"  # in every report folder: proof that this program wrote it


class ReportError(ValueError):
    """A report cannot be written where asked (the folder holds other files)."""


def _check_replaceable(out: Path) -> bool:
    """True if ``out`` is a report folder this program wrote (safe to replace), False if it
    does not exist or is empty; a ``ReportError`` for anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ReportError(f"{out} exists and is not a folder; choose another --out")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return False
    if MARKER in entries and entries <= REPORT_FILES | {MARKER}:
        return True
    others = sorted(entries - REPORT_FILES - {MARKER})
    raise ReportError(f"{out} is not empty and is not a report folder written by this program "
                      f"(it holds {', '.join((others or sorted(entries))[:5])}); nothing was "
                      "written: choose a new or empty folder")


def write_report(data: ReportData | dict, out_dir: str | Path,
                 plots_from: Path | None = None) -> Path:
    """Render ``data`` (validated as ``ReportData``) to ``out_dir`` (report.md, report.html,
    report.json, PNGs: three, and one per evidence attack).

    ``plots_from``: a report folder whose plots are copied instead of drawn again.

    Written to a temp folder, then renamed into place. An existing ``out_dir`` is replaced only
    if it is a report folder this program wrote (it holds the marker file and nothing else
    than report files); any other non-empty folder is refused, never deleted.
    """
    out = Path(out_dir)
    replace = _check_replaceable(out)
    d = ReportData.model_validate(data).model_dump()

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        if plots_from is not None and all((Path(plots_from) / p).is_file() for p in PLOTS):
            for p in PLOTS + EVIDENCE_PLOTS:
                if (Path(plots_from) / p).is_file():
                    shutil.copyfile(Path(plots_from) / p, tmp / p)
        else:
            from .plots import plot_evidence, plot_group_norms, plot_per_class, plot_training

            for a in (d.get("evidence") or {}).get("attacks", []):
                plot_evidence(a["title"], a["now"]["figures"], a["now"].get("verdict") or "",
                              tmp / f"evidence_{a['name']}.png", a["lower_is_retained"],
                              _reference_column(d["evidence"]))

            g = d["groups"]
            plot_group_norms(g["norms"], g["kept"], g["threshold"], tmp / "group_norms.png")
            plot_per_class(d["per_class"], d["request"]["classes"], d.get("earlier", []),
                           tmp / "per_class.png")
            plot_training(d["history"], d.get("selected_epoch"), tmp / "training.png")
        title = f"Erasure request {d['request']['id']}: {', '.join(d['request']['classes'])}"
        secs = sections(d)
        (tmp / "report.md").write_text(to_markdown(title, secs))
        (tmp / "report.html").write_text(to_html(title, secs))
        (tmp / "report.json").write_text(json.dumps(d, indent=2, default=str))  # order matters
        (tmp / MARKER).write_text(json.dumps({"request": d["request"]["id"]}) + "\n")

    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    if not replace:  # absent or empty: a rename onto an empty folder is atomic
        write_atomic(out, write)
        return out / "report.md"
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        write(tmp)
        fsync_tree(tmp)
        os.replace(out, old)  # only our own files are in it (checked above)
        os.replace(tmp, out)
        fsync_path(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    return out / "report.md"


def render_again(report_json: str | Path, out_dir: str | Path, **changes) -> Path:
    """Re-render a stored report (``forget report``), optionally with updated fields; the
    plots are copied from it (they do not depend on the fields that change)."""
    d = ReportData.model_validate_json(Path(report_json).read_text()).model_copy(update=changes)
    return write_report(d, out_dir, plots_from=Path(report_json).parent)
