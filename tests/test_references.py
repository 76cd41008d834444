"""benchmarks/references.py's agreement study, on fixed figures: the partition reference's
verdicts beside the retrain reference's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import references  # noqa: E402


def _fig(value: float, se: float = 0.02) -> dict:
    return {"value": value, "se": se, "metric": "", "spread": None}


def _request(values: dict[str, float], partition: float, never_seen: float) -> dict:
    return {"figures": {who: {"plain": {"identification": _fig(v)},
                              "now": {"identification": _fig(v)},
                              "never_seen": {"identification": {"figure": _fig(never_seen)}}}
                        for who, v in values.items()},
            "partition": {"group": ["a", "b"], "training": 1.0,
                          "figures": {"identification": _fig(partition)}}}


def test_partition_verdicts_count_against_the_retrain_verdicts():
    # retrained at 0.50; the original and the head-only change keep the class (0.95); the
    # candidate has forgotten it (0.52). A partition model at 0.51 agrees with retrain on all
    # three and flags neither the candidate nor the retrained model.
    rows = [_request({"gs-lora++": 0.52, "original": 0.95, "head-only": 0.95, "retrain": 0.50},
                     partition=0.51, never_seen=0.50)]
    s = references.summarise(rows, ("identification",), 1.0, "partition")["identification"]
    assert s["agreement"] == 1.0 and s["pairs"] == 3
    assert s["missed_controls"] == {"partition": 0, "retrain": 0} and s["controls"] == 2
    assert s["retrain_flagged_by_partition"] == 0
    # a partition model that itself still identifies the class well (its group mate carries
    # it) misses the positive controls: the study counts them
    rows = [_request({"gs-lora++": 0.52, "original": 0.95, "head-only": 0.95, "retrain": 0.50},
                     partition=0.95, never_seen=0.50)]
    s = references.summarise(rows, ("identification",), 1.0, "partition")["identification"]
    assert s["missed_controls"]["partition"] == 2 and s["agreement"] == 1 / 3
