"""Each deviation from the authors' code is a named option (issue 12): the two settings give
the two formulas, on fixed tensors, and ``profile: authors`` sets every one of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from forgetting.config import AUTHORS_PROFILE, Config, ForgetConfig, ModelConfig, load_config
from forgetting.evaluate import h_mean, metrics_from_predictions
from forgetting.lora import add_lora
from forgetting.methods.gs_lora.objective import GSLoRA, bounded_forget_loss
from forgetting.methods.gs_lora_pp.objective import kl_to_prototype, prototype_loss
from forgetting.methods.objective import Setup
from forgetting.model import create_model
from forgetting.train import forward, init_lora_a, set_dropout, update_ema

from .helpers import tiny_model

V = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
P = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])


def _kl(a, b):  # KL(softmax a || softmax b), batch mean, by hand
    pa, pb = a.softmax(-1), b.softmax(-1)
    return float((pa * (pa.log() - pb.log())).sum(-1).mean())


def test_kl_direction_ours_and_the_authors():
    assert float(kl_to_prototype(V, P, "p_to_proto")) == pytest.approx(_kl(V, P), rel=1e-5)
    assert float(kl_to_prototype(V, P, "proto_to_p")) == pytest.approx(_kl(P, V), rel=1e-5)
    assert _kl(V, P) != pytest.approx(_kl(P, V), rel=1e-2)  # the two really differ here
    bound = 18.0
    assert float(prototype_loss(V, P, None, None, 0.5, 0.0, bound, "proto_to_p")) == \
        pytest.approx(0.5 * (bound - _kl(P, V)), rel=1e-5)
    with pytest.raises(ValueError, match="KL direction"):
        kl_to_prototype(V, P, "sideways")


def test_h_mean_clamped_ours_negative_the_authors():
    assert h_mean(0.2, 0.5, 0.9) == 0.0
    drop = 0.2 - 0.5
    assert h_mean(0.2, 0.5, 0.9, clamp=False) == pytest.approx(2 * drop * 0.9 / (drop + 0.9))
    assert h_mean(0.9, 0.0, 0.9) == h_mean(0.9, 0.0, 0.9, clamp=False)


def test_acc_r_with_and_without_the_missing_classes():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([1, 1, 1, 1, 2, 2, 0, 0])  # class 3 (missing) all wrong
    m = metrics_from_predictions(pred, labels, [0], [], [3], None, ("a", "b", "c", "d"))
    assert m.acc_r == pytest.approx(4 / 6)  # ours: every retained class, 3 included
    assert m.acc_r_present == pytest.approx(1.0)  # the authors' Acc_r: 3 apart ...
    assert m.acc_missing == 0.0  # ... as Acc_m


def _tiny(head: str = "cosface"):
    return tiny_model(head)


def _objective(cls, model, cfg):
    """An objective without a request's data: for its terms on a fixed batch."""
    return cls(Setup(model, None, [2], [0, 1], [], [], cfg, torch.device("cpu")))


def test_forget_ce_with_and_without_the_margin():
    model = _tiny()
    peft = add_lora(model, 2, 2.0)
    base = peft.get_base_model()
    base.train()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    batch = (x[:2], y[:2]), (x[2:], y[2:])
    with torch.no_grad():  # the expected figures: numbers, not part of any graph
        feats = base.backbone(x[2:]).float()
        cos = F.linear(F.normalize(feats, dim=-1), F.normalize(base.head.weight, dim=-1))
        plain = F.cross_entropy(8.0 * cos, y[2:])
        margin = F.cross_entropy(8.0 * (cos - 0.3 * F.one_hot(y[2:], 3)), y[2:])
    for flag, want in ((False, plain), (True, margin)):
        cfg = ForgetConfig(forget_margin=flag)
        b = forward(base, *batch, None, 0.0, torch.device("cpu"))
        got = _objective(GSLoRA, base, cfg).terms(b).watch["ce_f"]
        assert float(got.detach()) == pytest.approx(float(want), rel=1e-4), flag
    # the margin lowers the true class's score, so the forgotten CE is higher with it and the
    # bounded term ReLU(BND - CE) switches off sooner: BND means another CE in each setting
    assert float(margin) > float(plain)


def test_ema_every_step_or_once_per_epoch():
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    runs = {}
    for how in ("step", "epoch"):
        cfg = ForgetConfig(ema_decay=0.5, ema_start_epoch=0, ema_update=how)
        ema, step = None, 0
        with torch.no_grad():
            lin.weight.fill_(0.0)
        for epoch in range(2):
            for _ in range(3):
                with torch.no_grad():
                    lin.weight.add_(1.0)
                step += 1
                if how == "step":
                    ema = update_ema(ema, lin, cfg, epoch, step)
            if how == "epoch":
                ema = update_ema(ema, lin, cfg, epoch, step)
        runs[how] = float(ema.module.weight.detach())
    # per step: starts at 1, then 0.5*prev + 0.5*w for w = 2..6: 5.03125
    assert runs["step"] == pytest.approx(5.03125)
    # per epoch: starts at 3 (end of epoch 0), then 0.5*3 + 0.5*6 = 4.5
    assert runs["epoch"] == pytest.approx(4.5)
    assert isinstance(ema, ModelEmaV3)


def test_lora_a_initialisation_of_later_requests():
    peft = add_lora(_tiny("linear"), 4, 4.0)
    a = {n: p for n, p in peft.named_parameters() if "lora_A" in n}
    fan_in = next(iter(a.values())).shape[1]

    def bound(slope):  # kaiming-uniform: gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2))
        return math.sqrt(2 / (1 + slope ** 2)) * math.sqrt(3 / fan_in)

    assert max(float(p.detach().abs().max()) for p in a.values()) <= bound(math.sqrt(5)) + 1e-6
    torch.manual_seed(1)
    init_lora_a(peft, math.sqrt(50))
    top = max(float(p.detach().abs().max()) for p in a.values())
    assert bound(math.sqrt(5)) / bound(math.sqrt(50)) == pytest.approx(2.92, abs=0.01)
    assert bound(math.sqrt(50)) * 0.8 < top <= bound(math.sqrt(50)) + 1e-6
    assert all(float(p.detach().abs().max()) == 0
               for n, p in peft.named_parameters() if "lora_B" in n)


def test_dropout_while_forgetting():
    model = _tiny("linear")
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0 for m in drops)
    set_dropout(model, 0.1)
    assert all(m.p == 0.1 for m in drops)


def test_lora_scale_ours_one_the_authors_one_eighth():
    for alpha, scale in ((8.0, 1.0), (1.0, 1 / 8)):
        peft = add_lora(_tiny("linear"), 8, alpha)
        fc = peft.get_base_model().backbone.blocks[0].mlp.fc1
        assert fc.scaling["default"] == pytest.approx(scale)


def test_profile_authors_sets_every_deviation(tmp_path):
    ours, authors = Config(), Config(profile="authors")
    changed = {k for k, v in authors.forget.model_dump().items()
               if v != ours.forget.model_dump()[k] and k != "prototypes"}
    assert changed == {k for k in AUTHORS_PROFILE["forget"] if k != "prototypes"}
    f = authors.forget
    assert (f.lora_alpha, f.weight_decay, f.ema_update, f.forget_margin, f.later_a_init,
            f.dropout, f.prototypes.kl_direction, f.prototypes.augment_views) == (
        1.0, 0.05, "epoch", True, "authors", 0.1, "proto_to_p", 4)
    changed_pro = {k for k, v in authors.forget.prototypes.model_dump().items()
                   if v != ours.forget.prototypes.model_dump()[k]}
    assert changed_pro <= set(AUTHORS_PROFILE["forget"]["prototypes"])
    assert changed_pro >= {"kl_direction", "augment_views", "w_f_per_request"}
    assert authors.forget.prototypes.kl_direction_fewshot == "proto_to_p"
    # one line in params.yaml, over values written out in full
    p = tmp_path / "params.yaml"
    p.write_text("profile: authors\nforget:\n  lora_alpha: 8.0\n  ema_update: step\n")
    assert load_config(p).forget.lora_alpha == 1.0 and load_config(p).forget.ema_update == "epoch"
    assert ours.forget.prototypes.kl_direction == "p_to_proto" and ours.forget.lora_alpha == 8.0


def test_fewshot_prototypes_over_randaugment_views(digits):
    from forgetting.datasets import k_shot
    from forgetting.methods.gs_lora_pp import PrototypeConfig
    from forgetting.prototypes import request_prototypes

    model, cpu = _digits_model(), torch.device("cpu")
    f, r = (k_shot(digits["train"], 4, 0, cls) for cls in ([0], [1, 2]))
    plain = request_prototypes(model, f, r, 10, cpu, PrototypeConfig(), True, 0)
    cfg = PrototypeConfig(augment_views=3)
    aug, again = (request_prototypes(model, f, r, 10, cpu, cfg, True, 0) for _ in range(2))
    full = request_prototypes(model, f, r, 10, cpu, cfg, False, 0)  # full data: no views
    assert torch.equal(full.vectors, plain.vectors)
    assert torch.equal(aug.vectors, again.vectors)  # seeded
    assert not torch.allclose(aug.vectors[:3], plain.vectors[:3])
    assert torch.equal(aug.present, plain.present)


def test_training_views_shift_each_image_within_its_bound_and_repeat_with_the_seed():
    from forgetting.augment import batch_views
    from forgetting.config import AugmentConfig

    assert batch_views(AugmentConfig(), 0) is None  # off by default: the batch as it is
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    views = batch_views(AugmentConfig(shift=2), 0)
    out = [views(x) for _ in range(4)]
    assert all(o.shape == x.shape for o in out)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    for o in out:
        for i in range(2):  # each image is one window of its padded self, all channels alike
            assert sum(torch.equal(o[i], padded[i, :, dy:dy + 8, dx:dx + 8])
                       for dy, dx in windows) >= 1
    assert any(not torch.equal(o, x) for o in out)  # it moves them
    again = batch_views(AugmentConfig(shift=2), 0)
    assert all(torch.equal(o, again(x)) for o in out)  # seeded: a run repeats
    flips = batch_views(AugmentConfig(hflip=True), 1)
    seen = [flips(x) for _ in range(4)]
    assert all(torch.equal(s[i], x[i]) or torch.equal(s[i], x[i].flip(-1))
               for s in seen for i in range(2))
    assert any(torch.equal(s[i], x[i].flip(-1)) for s in seen for i in range(2))
    # a training step sees the views, the parent's terms included (they read the batch's x)
    base = add_lora(_tiny("linear"), 2, 2.0).get_base_model()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 0, 2, 2, 1])
    b = forward(base, (x[:3], y[:3]), (x[3:5], y[3:5]), (x[5:], y[5:]), 0.5,
                torch.device("cpu"), views=batch_views(AugmentConfig(shift=1), 7))
    assert torch.equal(b.x, batch_views(AugmentConfig(shift=1), 7)(x))
    # repeats: every image that many times in a row, each copy a view of its own, the parts'
    # boundaries (retained | forgotten | earlier) moved with them
    b = forward(base, (x[:3], y[:3]), (x[3:5], y[3:5]), (x[5:], y[5:]), 0.5,
                torch.device("cpu"), views=batch_views(AugmentConfig(shift=1, repeats=3), 7))
    assert (b.n_r, b.n_f, len(b.feats)) == (9, 15, 18)
    assert torch.equal(b.y_f, y[3:5].repeat_interleave(3))
    copies = b.x[:3]  # three views of the first image: one window each, not all the same
    padded = F.pad(x[:1], (1, 1, 1, 1), mode="replicate")[0]
    assert all(any(torch.equal(c, padded[:, dy:dy + 8, dx:dx + 8])
                   for dy in range(3) for dx in range(3)) for c in copies)
    assert not (torch.equal(copies[0], copies[1]) and torch.equal(copies[1], copies[2]))
    with pytest.raises(ValueError, match="augment.shift or augment.hflip"):
        AugmentConfig(repeats=2)  # copies of the same image: nothing would change


def _digits_model():
    torch.manual_seed(0)
    return create_model(ModelConfig(embed_dim=32, depth=2, num_heads=2, image_size=16,
                                    patch_size=4), 10)


def test_per_request_beta_and_w_f_lists():
    cfg = ForgetConfig(beta_per_request=[0.3, 0.4], prototypes={"w_f_per_request": [0.015, 0.06]})
    picked = [(c.beta, c.prototypes.w_f, c.prototypes.w_f_fewshot) for c in
              (cfg.for_request(None, index=i) for i in range(3))]
    # the i-th request takes entry i, and the last one past the end; for k-shot requests too
    assert picked == [(0.3, 0.015, 0.015), (0.4, 0.06, 0.06), (0.4, 0.06, 0.06)]
    assert cfg.for_request(4, index=1).prototypes.w_f_fewshot == 0.06
    plain = ForgetConfig()
    assert plain.for_request(None, index=3).beta == plain.beta  # unset: one value for all
    with pytest.raises(ValueError, match="index"):
        cfg.for_request(None, index=-1)
    authors = Config(profile="authors").forget
    assert authors.beta_per_request == [0.3, 0.4, 0.28, 0.2]
    assert authors.prototypes.w_f_per_request == [0.015, 0.06, 0.025, 0.012]


def test_each_method_is_its_objective_on_the_same_training():
    """The baselines differ from GS-LoRA in the loss only: fine-tuning has the retained CE
    alone, NegGrad+ subtracts the forgotten CE without a bound, GS-LoRA bounds it and adds
    group sparsity; every method reads the same batch."""
    from forgetting.methods import spec

    model = _tiny("linear")
    peft = add_lora(model, 2, 2.0)
    base = peft.get_base_model()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 0, 2, 2, 1])
    cfg = ForgetConfig()
    with torch.no_grad():  # the loss terms' values only
        b = forward(base, (x[:3], y[:3]), (x[3:5], y[3:5]), (x[5:], y[5:]), 0.5,
                    torch.device("cpu"))
        got = {m: _objective(spec(m).load(), base, cfg.for_request(None, m)).terms(b)
               for m in ("gs-lora", "finetune", "neggrad")}
    ce_r, ce_f = got["finetune"].loss["ce_r"], got["finetune"].watch["ce_f"]
    assert list(got["finetune"].loss) == ["ce_r"]
    assert float(got["neggrad"].total()) == pytest.approx(float(ce_r - cfg.beta * ce_f))
    gs = got["gs-lora"]
    assert list(gs.loss) == ["ce_r", "forget", "sparsity", "earlier"]
    assert float(gs.loss["forget"]) == pytest.approx(cfg.beta * max(cfg.bound - float(ce_f), 0))
    assert float(gs.loss["sparsity"]) == pytest.approx(0.5 * float(gs.watch["structure"]))
    assert spec("gs-lora").load().uses_earlier(cfg) and not spec("neggrad").load().uses_earlier(cfg)
    ce = torch.tensor(20.0)
    assert float(bounded_forget_loss(ce, 15.0)) == 0.0  # past the bound: off
    assert float(bounded_forget_loss(ce, None)) == -20.0  # NegGrad+: never off
    with pytest.raises(ValueError, match="unknown method"):
        cfg.for_request(None, "scrub")
