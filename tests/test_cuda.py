"""The CUDA code paths (bf16 autocast, pinned memory, channels-last): skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_forgetting_on_cuda_with_bf16_matches_the_cpu_verdict(digits, base_model, tiny_cfg,
                                                              tmp_path):
    from forgetting.evaluate import evaluate
    from forgetting.lora import apply_adapter
    from forgetting.runtime import ACCEL, setup_runtime
    from forgetting.train import forget_classes

    cfg = tiny_cfg.model_copy(update={"device": "cuda", "amp": "bf16", "loader_workers": 2,
                                      "deterministic": False})
    dev = setup_runtime(cfg)
    try:
        assert dev.type == "cuda" and ACCEL.amp_dtype == torch.bfloat16
        res = forget_classes(base_model[0], digits["train"], digits["val"], [3],
                             cfg.forget.model_copy(update={"epochs": 3}), tmp_path / "a", dev,
                             progress=False)
        merged = apply_adapter(base_model[0].cpu(), tmp_path / "a").to(dev)
        m = evaluate(merged, digits["test"], [3], device=dev,
                     class_names=digits["info"].class_names)
        assert m.acc_f <= 0.1 and m.acc_r >= 0.8, m
        assert next(res.model.parameters()).device.type == "cuda"
    finally:
        setup_runtime(tiny_cfg)  # back to the CPU settings for the other tests
