"""GS-LoRA++ (Zhao et al., T-PAMI 2026): GS-LoRA plus class prototypes of the current model,
for the practical setting (few images per class, some retained classes missing). Its options
are ``forget.prototypes`` in params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...schema import Strict
from ..spec import MethodSpec, nth


class PrototypeConfig(Strict):
    """GS-LoRA++'s prototype loss. ``w_r`` is 0 in every published script, so off by default."""

    enabled: bool = Field(True, description="false: GS-LoRA++ without its prototype term "
                                            "(an ablation)")
    source: Literal["embedding", "logits"] = "embedding"
    w_f: float = Field(0.05, ge=0, description="full-data requests")
    # chosen on val: benchmarks/results/tune.json (4-shot space)
    w_f_fewshot: float = Field(0.1, ge=0, description="k-shot requests")
    w_r: float = Field(0.0, ge=0)
    bound: float = Field(18.0, ge=0)
    augment_views: int = Field(0, ge=0, description="k-shot requests: prototypes also over "
                                                    "this many RandAugment views per image")
    # ours on both, chosen on val: benchmarks/results/tune.json
    kl_direction: Literal["p_to_proto", "proto_to_p"] = Field(
        "p_to_proto", description="full-data requests: KL(p || proto) (ours) or "
                                  "KL(proto || p) (authors)")
    kl_direction_fewshot: Literal["p_to_proto", "proto_to_p"] = Field(
        "p_to_proto", description="k-shot requests (its own field, as w_f has)")
    w_f_per_request: list[float] | None = Field(
        None, min_length=1, description="w_f of the i-th request of a sequence (the last past "
                                        "the end), instead of w_f / w_f_fewshot")


def for_request(cfg, index: int):
    """The authors' continual scripts give each task its own w_f."""
    if not cfg.prototypes.w_f_per_request:
        return cfg
    w = nth(cfg.prototypes.w_f_per_request, index)
    return cfg.model_copy(update={"prototypes": cfg.prototypes.model_copy(
        update={"w_f": w, "w_f_fewshot": w})})


SPEC = MethodSpec(
    name="gs-lora++",
    summary="GS-LoRA++: GS-LoRA plus prototype regularisation (few-shot requests)",
    objective="forgetting.methods.gs_lora_pp.objective:GSLoRAPlusPlus",
    options=PrototypeConfig,
    options_key="prototypes",
    for_request=for_request,
)
