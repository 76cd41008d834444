"""A toy forgetting method, the whole of it: what docs/method.md shows a new method needs.
It pulls the forgotten images' predictions toward the uniform distribution (the
"confuse the classifier" objective), beside the retained CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetting.methods import MethodSpec
from forgetting.methods.objective import Batch, Objective, Terms

SPEC = MethodSpec(name="toy-uniform", summary="toy: forgotten predictions toward uniform",
                  objective="tests.toy_method:ToyUniform")


class ToyUniform(Objective):
    def terms(self, b: Batch) -> Terms:
        logp = F.log_softmax(b.head(b.f_f), dim=-1)
        uniform = torch.full_like(logp, 1.0 / logp.shape[-1])
        return Terms(loss={"ce_r": b.ce_retained(),
                           "uniform": F.kl_div(logp, uniform, reduction="batchmean")},
                     watch={"ce_f": F.nll_loss(logp, b.y_f)})
