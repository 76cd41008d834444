"""GS-LoRA (Zhao et al., CVPR 2024): LoRA on every block's FFN, a bounded forgetting term and
group sparsity, so each request edits only the blocks it needs. Its knobs are the common
``forget:`` options (beta, bound, alpha, the earlier-forgotten guard): it has no section of
its own."""

from ..spec import MethodSpec

SPEC = MethodSpec(
    name="gs-lora",
    summary="GS-LoRA: bounded forgetting loss + group-sparse LoRA on the FFN layers",
    objective="forgetting.methods.gs_lora.objective:GSLoRA",
)
