"""Every registered method on one tiny model, and a toy method added from outside."""

from __future__ import annotations

import pytest
import torch

from forgetting import methods
from forgetting.config import ForgetConfig, RequestConfig
from forgetting.lora import apply_adapter
from forgetting.train import forget_classes

from .conftest import CPU

FAST = {"epochs": 2, "min_steps_per_epoch": 4}


def _request(base_model, digits, name, path, shots=None):
    cfg = ForgetConfig(**FAST).for_request(shots, name)
    return forget_classes(base_model[0], digits["train"], digits["val"], [3], cfg, path, CPU,
                          earlier=[5], progress=False)


@pytest.mark.parametrize("name", methods.names())
def test_every_method_trains_a_request_whose_adapter_rebuilds_its_model(name, base_model, digits,
                                                                       tmp_path):
    res = _request(base_model, digits, name, tmp_path / name)
    rebuilt = apply_adapter(base_model[0], res.adapter_dir, res.adapter_sha256)
    want, got = res.model.state_dict(), rebuilt.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    rows = res.history
    assert len(rows) == FAST["epochs"] and all("loss" in r and "ce_r" in r for r in rows)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if name != "finetune":  # the one baseline with no forgetting term
        assert res.val.acc_f < res.val_before.acc_f - 0.5, (name, res.val)


def test_a_method_is_one_module_and_one_registration(base_model, digits, tmp_path):
    from pydantic import ValidationError

    from . import toy_method

    with pytest.raises(ValidationError, match="unknown method 'toy-uniform'"):
        RequestConfig(classes=["digit_3"], method="toy-uniform")
    methods.register(toy_method.SPEC)
    try:
        assert "toy-uniform" in methods.names()
        assert RequestConfig(classes=["digit_3"], method="toy-uniform").method == "toy-uniform"
        res = _request(base_model, digits, "toy-uniform", tmp_path / "toy")
        assert "uniform" in res.history[-1] and res.val.acc_f < res.val_before.acc_f
    finally:
        methods.unregister("toy-uniform")
    assert "toy-uniform" not in methods.names()
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.MethodSpec(name="gs-lora", summary="", objective="x:y"))
    with pytest.raises(ValueError, match="built in"):
        methods.unregister("gs-lora")
