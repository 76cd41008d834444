"""NegGrad+ (Kurmanji et al., 2023): plain gradient ascent on the forgotten images beside the
retained CE, with no bound and no group sparsity: the baseline that shows what GS-LoRA's
bound and sparsity add. Its weight is the common ``forget.beta``."""

from ..spec import MethodSpec

SPEC = MethodSpec(
    name="neggrad",
    summary="baseline: NegGrad+, unbounded gradient ascent on the forgotten images",
    objective="forgetting.methods.neggrad.objective:NegGrad",
)
