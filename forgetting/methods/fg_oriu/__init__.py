"""FG-OrIU (Feng et al., ICCV 2025): forgetting by feature and gradient orthogonality, on top
of GS-LoRA's objective. Its options are ``forget.fg_oriu`` in params.yaml."""

from __future__ import annotations

from pydantic import Field, model_validator

from ...schema import Strict
from ..spec import MethodSpec


class FgOriuConfig(Strict):
    """FG-OrIU's terms; weights chosen on val (benchmarks/results/tune.json, fg-oriu space:
    the authors' 0.01 for w_retain let Acc_o reach 1.5 %, w_forget 1.0 wrecked Acc_r)."""

    energy: float = Field(0.99, gt=0, le=1, description="share of the features' squared "
                                                         "singular values a subspace keeps")
    w_forget: float = Field(0.1, ge=0, description="nuclear norm of forgotten features in "
                                                   "their old subspace")
    w_retain: float = Field(0.1, ge=0, description="retained features outside theirs")
    project_gradients: bool = Field(True, description="LoRA A updates orthogonal to the "
                                                      "retained inputs of each layer")
    max_images: int = Field(2048, ge=1, description="images per kind the subspaces are "
                                                    "computed from (a seeded draw)")

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_enabled(cls, data):
        # params.yaml files written before methods were modules carry `enabled`, which the
        # request's method now decides
        if isinstance(data, dict) and "enabled" in data:
            data = {k: v for k, v in data.items() if k != "enabled"}
        return data


SPEC = MethodSpec(
    name="fg-oriu",
    summary="FG-OrIU: GS-LoRA's objective plus feature and gradient orthogonality",
    objective="forgetting.methods.fg_oriu.objective:FGOrIU",
    options=FgOriuConfig,
    options_key="fg_oriu",
)
