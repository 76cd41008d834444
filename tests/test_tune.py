"""benchmarks/tune.py's rule for choosing defaults on the validation split, on fixed rows."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import tune  # noqa: E402


def _run(acc_r: list[float], acc_f: list[float], acc_o: list, kib: float) -> list[dict]:
    return [{"acc_r": r, "acc_f": f, "acc_o": o, "adapter_bytes": kib * 1024}
            for r, f, o in zip(acc_r, acc_f, acc_o, strict=True)]


def test_score_means_over_seeds_and_reads_a_missing_acc_o_as_zero():
    runs = [_run([0.9, 0.8], [0.0, 0.02], [None, 0.0], 10),
            _run([0.9, 0.9], [0.0, 0.0], [None, 0.01], 30)]
    sc = tune.score(runs, bar=0.01)
    assert sc["acc_r_final"] == pytest.approx(0.85)
    assert sc["acc_f_max"] == pytest.approx(0.01) and sc["acc_o_max"] == pytest.approx(0.005)
    assert sc["admissible"] and sc["adapter_bytes"] == pytest.approx(20 * 1024)
    assert not tune.score(runs, bar=0.005)["admissible"]


def _row(name: str, acc_r: float, acc_f: float, kib: float, ok: bool = True) -> dict:
    return {"setting": {"name": name}, "score": {
        "acc_r_final": acc_r, "acc_f_max": acc_f, "acc_o_max": 0.0, "adapter_bytes": kib * 1024,
        "admissible": ok}}


def test_choose_the_best_admissible_and_the_smaller_adapter_within_a_tenth_of_a_point():
    rows = [_row("best but over the bar", 0.99, 0.2, 10, ok=False),
            _row("dense", 0.950, 0.0, 160), _row("sparse", 0.9495, 0.0, 40),
            _row("worse", 0.93, 0.0, 10)]
    assert tune.choose(rows)["setting"]["name"] == "sparse"
    rows[2]["score"]["acc_r_final"] = 0.948  # now 0.2 points behind: accuracy wins
    assert tune.choose(rows)["setting"]["name"] == "dense"
    # none admissible: the least excess over the bars
    none = [_row("a", 0.95, 0.30, 10, ok=False), _row("b", 0.90, 0.06, 10, ok=False)]
    assert tune.choose(none)["setting"]["name"] == "b"


def test_settings_and_overrides_reach_the_forget_config():
    from forgetting.config import Config

    grid = {"alpha": [0.5, 0.1], "prototypes.kl_direction": ["p_to_proto", "proto_to_p"]}
    assert len(tune.settings(grid)) == 4
    cfg = tune.with_forget(Config(), {"alpha": 0.3, "prototypes.w_f_fewshot": 0.2,
                                      "fg_oriu.w_retain": 0.5})
    assert (cfg.forget.alpha, cfg.forget.prototypes.w_f_fewshot, cfg.forget.fg_oriu.w_retain) \
        == (0.3, 0.2, 0.5)
    assert cfg.forget.prototypes.w_f == Config().forget.prototypes.w_f  # the rest untouched
