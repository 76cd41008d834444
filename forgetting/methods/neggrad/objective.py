"""NegGrad+'s objective: CE_r - beta * CE_f."""

from __future__ import annotations

import torch.nn.functional as F

from ..objective import Batch, Objective, Terms


class NegGrad(Objective):
    embedding_terms = False

    def terms(self, b: Batch) -> Terms:
        ce_f = F.cross_entropy(b.head(b.f_f), b.y_f)
        return Terms(loss={"ce_r": b.ce_retained(), "forget": -self.cfg.beta * ce_f},
                     watch={"ce_f": ce_f})
