"""FG-OrIU (forgetting/methods/fg_oriu/): subspaces, the two feature terms and the gradient projection
on fixed tensors, then one request on the session's digits model."""

from __future__ import annotations

import pytest
import torch

from forgetting.config import ForgetConfig
from forgetting.lora import add_lora
from forgetting.methods.fg_oriu.objective import Subspaces, bases, forward_losses, project_gradients
from forgetting.methods.objective import taps

from .helpers import tiny_model

E = torch.eye(4)


def test_bases_keep_the_energy_share_and_extend_a_prior():
    # rows along e0 (energy 9 + 9) and e1 (energy 1): 18 / 19 = 0.947 of it on e0
    rep = torch.stack([3 * E[0], 3 * E[0], E[1]])
    one, two = bases(rep, 0.9), bases(rep, 0.99)
    assert one.shape == (4, 1) and torch.allclose(one.abs().squeeze(), E[0])
    assert two.shape == (4, 2)
    assert torch.allclose(two.T @ two, torch.eye(2), atol=1e-6)
    # dynamic adaptation: a prior on e2 is kept, the new rows add e0 (and e1 past 0.95)
    merged = bases(rep, 0.9, prior=E[:, 2:3])
    assert merged.shape == (4, 2)
    assert torch.allclose((merged @ merged.T) @ E[2], E[2], atol=1e-6)
    assert torch.allclose((merged @ merged.T) @ E[0], E[0], atol=1e-6)
    # rows already inside the prior add nothing
    assert bases(rep[:2], 0.99, prior=E[:, :1]).shape == (4, 1)


def test_forward_terms_on_fixed_features():
    sub = Subspaces(forget=[E[:, :1]], retain=[E[:, 1:3]], fc1=[], fc2=[])
    # layout [retained, forgotten]: retained rows half outside e1/e2, forgotten on e0
    z = torch.stack([E[1] + E[3], E[2], 2 * E[0], E[0] + E[1]])
    lf, lr = forward_losses([z], 2, 4, sub)
    # forgotten, normalised: [1, 0, 0, 0] and [.707, .707, 0, 0]; on e0: a 2 x 1 matrix with
    # entries 1 and .707, whose nuclear norm is its length
    assert float(lf) == pytest.approx((1 + 0.5) ** 0.5, rel=1e-5)
    # retained, normalised: (e1 + e3)/1.414 leaves e3/1.414 outside; e2 nothing
    assert float(lr) == pytest.approx(0.5 ** 0.5, rel=1e-5)
    inside = torch.stack([E[1], E[2], E[3], E[3]])  # forgotten already out of e0
    assert float(forward_losses([inside], 2, 4, sub)[0]) == 0.0
    assert float(forward_losses([inside], 2, 4, sub)[1]) == 0.0


def _tiny():
    return tiny_model(embed_dim=8)


def test_taps_and_gradient_projection():
    peft = add_lora(_tiny(), 2, 2.0)
    backbone = peft.get_base_model().backbone
    with taps(backbone, inputs=True) as got:
        backbone(torch.randn(5, 1, 8, 8))
    assert [t.shape for t in got["out"]] == [(5, 8)] * 2
    assert [t.shape for t in got["fc1"]] == [(5, 8)] * 2
    assert [t.shape for t in got["fc2"]] == [(5, 32)] * 2
    assert not backbone.blocks[0]._forward_hooks  # removed on exit
    sub = Subspaces(forget=[], retain=[], fc1=[torch.eye(8)[:, :3]] * 2,
                    fc2=[torch.eye(32)[:, :5]] * 2)
    for p in peft.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    project_gradients(peft, sub)
    for name, p in peft.named_parameters():
        if "lora_A" in name:
            basis = sub.fc1[0] if ".fc1." in name else sub.fc2[0]
            assert float((p.grad @ basis).abs().max()) < 1e-6, name  # nothing inside
            assert float(p.grad.abs().sum()) > 0  # the rest kept
        elif "lora_B" in name:
            assert torch.equal(p.grad, torch.ones_like(p))  # B: output space, untouched


def test_fg_oriu_request_forgets_and_keeps_lora_a_off_the_retained_inputs(digits, base_model,
                                                                          tmp_path):
    from forgetting.datasets import request_data
    from forgetting.methods.fg_oriu.objective import subspaces
    from forgetting.train import forget_classes

    model, _ = base_model
    cpu = torch.device("cpu")
    cfg = ForgetConfig(epochs=2, min_steps_per_epoch=4).for_request(None, "fg-oriu")
    assert cfg.method == "fg-oriu" and ForgetConfig().for_request(None).method == "gs-lora++"
    res = forget_classes(model, digits["train"], digits["val"], [3], cfg, tmp_path / "a", cpu,
                         progress=False)
    assert res.val.acc_f <= 0.05 < res.val_before.acc_f
    assert res.val.acc_r >= res.val_before.acc_r - 0.10
    dims = res.method_record["subspace_dims"]
    assert set(dims) == {"forget", "retain", "fc1", "fc2"} and len(dims["fc1"]) == model.depth
    assert all(0 < d <= 128 for d in dims["retain"])
    assert "orth" in res.history[0] and res.history[0]["orth"] > 0
    # the stored adapter's A matrices moved only off the retained inputs of their layer
    data = request_data(digits["train"], [3], [c for c in range(10) if c != 3], [], None, 0)
    sub = subspaces(model, data.forget, data.retained, None, cfg.fg_oriu.energy,
                    cfg.fg_oriu.max_images, cpu)
    torch.manual_seed(cfg.seed)
    init = {n: p.detach().clone() for n, p in add_lora(model, cfg.rank, cfg.lora_alpha)
            .named_parameters() if "lora_A" in n}
    from safetensors.torch import load_file

    stored = load_file(res.adapter_dir / "adapter_model.safetensors")
    checked = 0
    for name, a in stored.items():
        if "lora_A" not in name:
            continue
        b = int(name.split("blocks.")[1].split(".")[0])
        basis = sub.fc1[b] if ".fc1." in name else sub.fc2[b]
        key = next(k for k in init if k.replace(".default", "") == name)
        moved = a - init[key]
        assert float((moved @ basis).norm()) < 1e-3 * float(moved.norm()) + 1e-6, name
        checked += 1
    assert checked
