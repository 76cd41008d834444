"""Reports: never written over a folder the program did not create; the content an auditor
reads first (the retained classes that lost most, the cost against retraining)."""

from __future__ import annotations

import json

import pytest

from forgetting.report import MARKER, ReportError, render_again, write_report


def _data(**changes) -> dict:
    names = ["a", "b", "c", "d"]
    per_class = {"a": {"before": 0.9, "after": 0.0, "retrain": 0.0},
                 "b": {"before": 0.8, "after": 0.6, "retrain": 0.85},
                 "c": {"before": 0.9, "after": 0.88, "retrain": 0.9},
                 "d": {"before": 0.7, "after": 0.72, "retrain": 0.7}}
    d = {"request": {"id": "req-0001", "classes": ["a"], "shots": 4, "method": "gs-lora++",
                     "reason": "asked", "requester": "t"},
         "metrics": {"before": {"acc_f": 0.9, "acc_r": 0.8, "acc_o": None, "h_mean": None},
                     "after": {"acc_f": 0.0, "acc_r": 0.73, "acc_o": None, "h_mean": 0.8},
                     "retrain": None},
         "per_class": {n: per_class[n] for n in names}, "mia": {},
         "groups": {"norms": {"0": 0.0, "1": 1.3, "2": 0.004}, "kept": [1], "threshold": 0.02},
         "history": [{"epoch": 0, "ce_r": 0.1, "ce_f": 2.0, "structure": 1.0,
                      "val_raw": {"h_mean": 0.5, "acc_r": 0.8, "acc_f": 0.5}}],
         "selected_epoch": 0, "versions": {"adapter_bytes": 1024, "adapter_sha256": "ab"},
         "gate": "passed", "earlier": [], "train_seconds": 10.0, "retrain_seconds": 55.0}
    return d | changes


def test_a_non_empty_folder_it_did_not_create_is_refused_untouched(tmp_path):
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ReportError, match=r"Documents is not empty and is not a report folder "
                                          r"written by this program \(it holds thesis.tex\)"):
        write_report(_data(), mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "years of work"
    # a report folder with a file of the user's added is not ours to replace either
    out = tmp_path / "r"
    write_report(_data(), out)
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="my-notes.txt"):
        write_report(_data(), out)
    assert (out / "my-notes.txt").read_text() == "mine"


def test_new_empty_and_own_folders_are_written(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_report(_data(), empty)
    assert (empty / MARKER).is_file() and (empty / "report.md").is_file()
    again = render_again(empty / "report.json", empty, purged_note="purged on day X")
    assert "purged on day X" in again.read_text()  # its own earlier output: replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_largest_retained_drops_come_first_and_cost_is_shown(tmp_path):
    md = write_report(_data(), tmp_path / "r").read_text()
    rows = [line for line in md.splitlines() if "| retained |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["b", "c", "d"], rows  # -20, -2, +2
    assert "| b | retained | 80.00 | 60.00 | -20.00 |" in md
    assert "| forgetting (training) | 10.0 |" in md and "| speed-up | 5.5x |" in md


def test_rendering_again_reuses_the_plots(tmp_path):
    first = write_report(_data(), tmp_path / "r").parent
    stored = json.loads((first / "report.json").read_text())
    assert stored["groups"]["norms"]["0"] == 0.0
    png = (first / "group_norms.png").read_bytes()
    out = render_again(first / "report.json", tmp_path / "again").parent
    assert (out / "group_norms.png").read_bytes() == png


def test_long_work_logs_progress_lines_off_a_terminal():
    """tqdm hides itself when stderr is not a terminal; the epochs are then logged instead
    (the first, the last, and at most one line per interval between them)."""
    import logging

    from forgetting.progress import progress_bar

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("forgetting")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        bar = progress_bar(5, "pretrain", every_s=3600)
        for epoch in bar:
            bar.set_postfix(loss=f"{1 / (epoch + 1):.3f}")
        bar.close()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(lines) == 2, lines
    assert lines[0].startswith("pretrain epoch 1/5 (") and lines[0].endswith("loss 1.000")
    assert lines[1].startswith("pretrain epoch 5/5 (") and lines[1].endswith("loss 0.200")
