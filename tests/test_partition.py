"""The partition reference (``forgetting/evidence/partition.py``): one model per seeded group of
classes, trained from scratch without that group the first time a request names one of its
classes, as every attack's bar. The grouping, the per-class figures' mean and its noise, and a
workspace whose two requests (one class each, the same group) get every verdict against the
partition models with one group model trained, and no retrain."""

from __future__ import annotations

import json

import pytest

from forgetting.config import load_config
from forgetting.evidence import passes, verdicts
from forgetting.evidence.partition import group_of, groups, mean_of, reference
from forgetting.evidence.stats import Figure

from .conftest import MICRO
from .helpers import cli, workspace


def test_groups_cover_every_class_once_and_repeat_for_a_seed():
    parts = groups(list(range(10)), seed=0, size=3)
    assert sorted(c for g in parts for c in g) == list(range(10))
    assert [len(g) for g in parts] == [3, 3, 3, 1]
    assert parts == groups(list(range(10)), seed=0, size=3)
    assert parts != groups(list(range(10)), seed=1, size=3)
    assert 4 in group_of(parts, 4)
    with pytest.raises(ValueError, match="class 12 is in no group"):
        group_of(parts, 12)
    pool = [0, 2, 3, 5, 6, 8, 9]  # a workspace with never-seen classes: gaps in the indices
    in_pairs = groups(pool, seed=1, size=2)
    assert sorted(c for g in in_pairs for c in g) == pool
    assert [len(g) for g in in_pairs] == [2, 2, 2, 1]
    assert in_pairs == groups(pool, seed=1, size=2)
    assert in_pairs != groups(pool, seed=2, size=2)
    # a group holds at most half the classes: each group model has classes left to learn
    assert [len(g) for g in groups([0, 1, 2, 3], seed=0, size=4)] == [2, 2]
    assert [len(g) for g in groups([0, 1, 2], seed=0, size=4)] == [1, 1, 1]


def test_a_reference_is_the_mean_of_per_class_figures_with_the_noise_of_a_mean():
    fig = mean_of([Figure(0.2, 0.03), Figure(0.6, 0.04)])
    assert fig.value == pytest.approx(0.4) and fig.se == pytest.approx(0.025)
    assert fig.spread is None  # two classes differ: that is not noise
    per_class = {c: {a: {"figure": Figure(v, 0.01).as_dict()}
                     for a in ("identification", "relearning")}
                 for c, v in ((1, 0.3), (4, 0.5))}
    ref = reference(per_class, now=[4], so_far=[1, 4])
    assert ref["now"]["identification"]["figure"]["value"] == pytest.approx(0.5)
    assert ref["so_far"]["identification"]["figure"]["value"] == pytest.approx(0.4)
    assert "relearning" not in ref["so_far"]  # relearning is per request, as in ``measure``
    assert reference(per_class, now=[1], so_far=[1])["so_far"] == {}
    # the retrain rule reads it: twice the noise
    lines = verdicts({"now": {"identification": {"figure": Figure(0.9, 0.01).as_dict()}}},
                     ref, "partition")["now"]
    assert lines["identification"].startswith("retains more than partition models")
    assert lines["identification"].endswith("images only: one model per group)")


def test_the_partition_reference_is_a_choice_gates_accept_without_a_retrain():
    cfg = load_config(None, {"evidence": {"reference": "partition", "retrain_baseline": "auto"},
                             "gates": {"evidence": ["identification"]}})
    assert cfg.evidence_reference == "partition" and not cfg.trains_retrain


@pytest.mark.slow
def test_requests_with_the_partition_reference_train_each_group_once_and_no_retrain(
        prefect_api, tmp_path):
    from flows.process_requests import process_requests_flow

    params = {**MICRO,
              "evidence": {"reference": "partition", "partition_size": 2,
                           "retrain_baseline": "auto", "membership_inference": False,
                           "attacks": ["linear_probe", "identification", "relearning"],
                           "relearn_max_steps": 5, "relearn_repeats": 1},
              "gates": {**MICRO["gates"], "evidence": ["identification"]}}
    ws, _ = workspace(tmp_path, params)
    names = [f"digit_{i}" for i in range(10)]
    first, second = (names[c] for c in groups(list(range(10)), ws.config().pretrain.seed, 2)[0])
    for name in (first, second):
        added = cli("request", "add", name, "--root", str(tmp_path))
        assert added.exit_code == 0, added.output
    outs = process_requests_flow(str(tmp_path))
    assert [o["status"] in ("done", "failed_gate") for o in outs] == [True, True], outs
    stored = list(ws.state.glob("evidence/partition-*/group-*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["classes"] == [first, second]
    trained = []
    for out in outs:
        assert not (ws.work_dir(out["id"]) / "retrain.json").exists()
        ev = json.loads((ws.report_dir(out["id"]) / "report.json").read_text())["evidence"]
        trained.append(ev["seconds"]["partition models"]["training"])
        assert ev["reference"] == "partition" and [first, second] in ev["partition_groups"]
        for a in ev["attacks"]:
            assert a["now"]["figures"]["partition models"]["value"] is not None, a
            assert "partition models" in a["now"]["verdict"], a
        md = (ws.report_dir(out["id"]) / "report.md").read_text()
        assert "Evidence against the partition models reference" in md
        assert "What the partition reference shows" in md
        ident = next(a for a in ev["attacks"] if a["name"] == "identification")
        assert (out["status"] == "failed_gate") == (not passes(ident["now"]["verdict"]))
    assert trained[0] > 0 and trained[1] == 0  # the group's model trained once, then read
