"""The promotion gate: one function for the request flow and ``dvc repro``; it bounds the
forgotten classes' accuracy, the mean retained drop and the worst single retained class."""

from forgetting.config import GateConfig
from forgetting.gates import class_drops, gate_verdict

BEFORE = {"coat": 0.9, "pullover": 0.80, "shirt": 0.7, "bag": 0.95, "boot": 0.97}


def _metrics(after: dict) -> dict:
    retained = [c for c in BEFORE if c != "coat"]
    mean = lambda d: sum(d[c] for c in retained) / len(retained)  # noqa: E731
    return {"acc_f": after["coat"], "acc_r": mean(after), "before_acc_r": mean(BEFORE),
            "per_class": after, "before_per_class": BEFORE}


def test_a_wrecked_class_fails_the_gate_even_when_the_mean_passes():
    # the Fashion-MNIST case: pullover 80 % -> 60 %, the mean retained drop only 4 points
    after = {"coat": 0.0, "pullover": 0.60, "shirt": 0.70, "bag": 0.96, "boot": 0.98}
    m = _metrics(after)
    assert m["before_acc_r"] - m["acc_r"] < 0.05
    gates = GateConfig(max_acc_f=0.05, max_acc_r_drop=0.05, max_class_drop=0.15)
    verdict = gate_verdict(m, gates, gone=["coat"])
    assert verdict == "1 retained class dropped by more than 0.15: pullover 0.800 -> 0.600"
    assert gate_verdict(m, gates.model_copy(update={"max_class_drop": 0.25}), ["coat"]) is None


def test_forgotten_classes_are_not_counted_as_damage():
    after = {"coat": 0.0, "pullover": 0.80, "shirt": 0.7, "bag": 0.95, "boot": 0.97}
    assert gate_verdict(_metrics(after), GateConfig(max_class_drop=0.0), gone=["coat"]) is None
    assert class_drops(BEFORE, after, ["coat"])[0] == ("bag", 0.95, 0.95, 0.0)


def test_every_failing_bound_is_named():
    after = {"coat": 0.5, "pullover": 0.1, "shirt": 0.1, "bag": 0.95, "boot": 0.97}
    verdict = gate_verdict(_metrics(after), GateConfig(), gone=["coat"])
    assert verdict.startswith("Acc_f 0.500 > 0.05; Acc_r drop 0.325 > 0.05; 2 retained classes")
    assert "pullover 0.800 -> 0.100, shirt 0.700 -> 0.100" in verdict
