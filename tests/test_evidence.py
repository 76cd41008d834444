"""The attacks of ``forgetting/evidence`` can fail. On real (tiny) models: the original model is
flagged by each attack, a head-only change (the classes' head rows zeroed: Acc_f 0) is caught
by the linear probe and the k-NN view, and an independently retrained model passes against the
retrain reference (two seeds pooled, so the verdict's noise holds the spread between seeds).

Two regimes, because each attack needs something to find. Membership inference and relearning
run on models that memorised 40 images per class (a well-generalising digits model leaves
membership almost nothing: its LiRA AUC on one class's training images was 0.52-0.61); the
embedding views run on the session's tiny digits model trained on every training image (with
40 images per class its embedding of a class is too loose for a probe to tell it from a
retrained one: 0.86 vs 0.72, inside the two seeds' spread)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from forgetting.config import EvidenceConfig, ModelConfig, TrainConfig
from forgetting.evaluate import evaluate
from forgetting.evidence import INDISTINGUISHABLE, measure, passes, pooled, train_references, verdicts
from forgetting.evidence.stats import Figure, pool, tpr_at_fpr, verdict
from forgetting.model import create_model
from forgetting.pretrain import fit

from .conftest import CPU, TINY

SMALL_MODEL = ModelConfig(embed_dim=48, depth=2, num_heads=4, image_size=16, patch_size=4)
SMALL_TRAIN = TrainConfig(epochs=40, batch_size=32, lr=3e-3, warmup_epochs=2)
TINY_MODEL, TINY_TRAIN = ModelConfig(**TINY["model"]), TrainConfig(**TINY["pretrain"])


def _train(model_cfg, train_cfg, train, val, classes=None, seed=0):
    torch.manual_seed(seed)
    return fit(create_model(model_cfg, 10), train, val,
               train_cfg.model_copy(update={"seed": seed}), CPU, classes=classes,
               progress=False).model


def _verdicts(models: dict, reference_models: list, train, heldout, gone, cfg, refs=None):
    """Each model's verdict lines against the pooled retrain seeds."""
    reference = pooled([measure(m, train, heldout, gone, CPU, cfg, refs)
                        for m in reference_models])
    return {k: verdicts(measure(m, train, heldout, gone, CPU, cfg, refs), reference)["now"]
            for k, m in models.items()}


@pytest.fixture(scope="module")
def memorised(digits):
    """40 training images per class, memorised; class 8 forgotten."""
    rng = np.random.default_rng(0)
    train = digits["train"].subset(np.sort(np.concatenate(
        [rng.choice(np.flatnonzero(digits["train"].labels == c), 40, replace=False)
         for c in range(10)])))
    heldout, gone = digits["val"].joined(digits["test"]), [8]
    rest = [c for c in range(10) if c not in gone]
    cfg = EvidenceConfig(attacks=["membership", "relearning"], relearn_max_steps=40,
                         relearn_lr=3e-4)
    original = _train(SMALL_MODEL, SMALL_TRAIN, train, digits["val"])
    retrains = [_train(SMALL_MODEL, SMALL_TRAIN, train, digits["val"], rest, s) for s in (0, 2)]
    refs = train_references(SMALL_MODEL, 10, train, digits["val"], heldout, SMALL_TRAIN, CPU,
                            4, 40)
    return _verdicts({"original": original}, retrains, train, heldout, gone, cfg, refs)


@pytest.fixture(scope="module")
def standard(digits, base_model):
    """The session's tiny digits model (every training image); classes 3 and 8 forgotten."""
    train, heldout, gone = digits["train"], digits["val"].joined(digits["test"]), [3, 8]
    rest = [c for c in range(10) if c not in gone]
    original = base_model[0]
    retrain, retrain2, retrain3 = (_train(TINY_MODEL, TINY_TRAIN, train, digits["val"], rest, s)
                                   for s in (0, 1, 2))
    head_only = copy.deepcopy(original)
    with torch.no_grad():
        head_only.head.weight[gone] = 0
        head_only.head.bias[gone] = 0
    models = {"original": original, "head_only": head_only, "retrain2": retrain2}
    acc_f = {k: evaluate(m, digits["test"], gone, device=CPU).acc_f for k, m in models.items()}
    cfg = EvidenceConfig(attacks=["linear_probe", "identification", "relearning"],
                         relearn_max_steps=40, relearn_lr=3e-4)
    return _verdicts(models, [retrain, retrain3], train, heldout, gone, cfg), acc_f


@pytest.mark.slow
def test_the_original_model_is_flagged_by_every_attack(memorised, standard):
    lines = {**memorised["original"], **{a: standard[0]["original"][a]
                                         for a in ("linear_probe", "identification")}}
    assert sorted(lines) == ["identification", "linear_probe", "membership", "relearning"]
    for attack, line in lines.items():
        assert line.startswith("retains more than retrain"), (attack, line)


@pytest.mark.slow
def test_a_head_only_change_is_caught_by_the_embedding_views(standard):
    lines, acc_f = standard
    assert acc_f["head_only"] == 0.0 < acc_f["original"]
    for attack in ("linear_probe", "identification"):
        assert not passes(lines["head_only"][attack]), (attack, lines["head_only"][attack])


@pytest.mark.slow
def test_an_independently_retrained_model_passes(standard):
    lines, acc_f = standard
    assert acc_f["retrain2"] == 0.0
    for attack, line in lines["retrain2"].items():
        assert passes(line), (attack, line)


def test_verdict_and_tpr_at_low_fpr_on_fixed_numbers():
    members, non = np.array([5.0, 4.0, 0.5, 0.2]), np.arange(100) / 100.0  # non-members 0..0.99
    assert tpr_at_fpr(members, non, 0.01) == 0.5  # above the top non-member: 2 of 4
    assert tpr_at_fpr(members, non, 0.0) == 0.5
    assert tpr_at_fpr(members, non, 0.5) == 0.75  # 0.5 beats half of the non-members
    assert verdict(Figure(0.9, 0.01), Figure(0.9, 0.01), "x").startswith(INDISTINGUISHABLE)
    assert verdict(Figure(0.99, 0.01), Figure(0.9, 0.01), "x").startswith("retains more")
    assert verdict(Figure(0.5, 0.01), Figure(0.9, 0.01), "x").startswith("below retrain")
    # relearning: fewer steps than retrain means the class comes back faster
    assert verdict(Figure(2.0, 0.5), Figure(12.0, 0.5), "x", lower_is_retained=True
                   ).startswith("retains more")
    # the spread between retrain seeds widens the noise
    ref = pool([Figure(0.65, 0.05), Figure(0.77, 0.05)])
    assert ref.value == pytest.approx(0.71) and ref.spread == pytest.approx(0.0849, abs=1e-3)
    assert verdict(Figure(0.80, 0.02), ref, "x").startswith(INDISTINGUISHABLE)
    assert verdict(Figure(0.80, 0.02), Figure(0.71, 0.02), "x").startswith("retains more")


def test_auc_and_tpr_at_fpr_are_sklearns_figures_on_tied_scores():
    """Counted by hand for speed (stats.py): the same figures as sklearn, at every threshold
    (``drop_intermediate=False``: sklearn's default drops collinear points, corners included,
    and understates the TPR there)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from forgetting.evidence.stats import auc

    rng = np.random.default_rng(0)
    for n1, n0, decimals in ((150, 120, 1), (40, 300, 2), (7, 9, 0)):
        m, nm = np.round(rng.normal(0.4, 1, n1), decimals), np.round(rng.normal(0, 1, n0), decimals)
        y, s = np.r_[np.ones(n1), np.zeros(n0)], np.r_[m, nm]
        assert auc(m, nm) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        f, t, _ = roc_curve(y, s, drop_intermediate=False)
        for fpr in (0.0, 0.01, 0.1, 0.5):
            assert tpr_at_fpr(m, nm, fpr) == pytest.approx(float(t[f <= fpr].max()), abs=1e-12)


def _result(**figures):
    return {"now": {a: {"figure": Figure(v, 0.01).as_dict()} for a, v in figures.items()}}


def test_the_evidence_gate_refuses_only_what_retains_more_than_retrain():
    from tasks.evidence import evidence_gate

    retrain = {"evidence": _result(linear_probe=0.80, identification=0.50, relearning=12.0)}
    metrics = {"evidence": {"after": _result(linear_probe=0.99, identification=0.30,
                                             relearning=11.99)}}
    assert evidence_gate(metrics, retrain, []) is None  # gates.evidence: [] turns it off
    reason = evidence_gate(metrics, retrain, ["linear_probe", "identification", "relearning"])
    assert reason.startswith("evidence linear_probe: retains more than retrain"), reason
    assert "identification" not in reason and "relearning" not in reason  # below / inside
    assert "membership: not measured" in evidence_gate(metrics, retrain, ["membership"])


def test_the_identification_gate_is_on_by_default_against_the_partition_models():
    from forgetting.config import Config, ConfigError, load_config

    default = Config()
    assert default.gates.evidence == ["identification"]
    # no model trained from scratch per request: benchmarks/results/references.json
    assert default.evidence_reference == "partition" and not default.trains_retrain
    aside = load_config(None, {"data": {"reference_classes": 2}})
    assert aside.evidence_reference == "never-seen" and not aside.trains_retrain
    with pytest.raises(ConfigError, match="needs evidence.retrain_baseline: true"):
        load_config(None, {"evidence": {"reference": "retrain", "retrain_baseline": False}})
    off = load_config(None, {"evidence": {"reference": "retrain", "retrain_baseline": False},
                             "gates": {"evidence": []}})
    assert off.gates.evidence == [] and not off.trains_retrain
