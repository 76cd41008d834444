"""Fine-tuning on the retained images alone: the weakest baseline every unlearning paper
reports. Same LoRA training, adapter format and epoch selection as GS-LoRA, so the two differ
in the objective only."""

from ..spec import MethodSpec

SPEC = MethodSpec(
    name="finetune",
    summary="baseline: fine-tune on the retained images only (no forgetting term)",
    objective="forgetting.methods.finetune.objective:Finetune",
)
