"""Fine-tuning's objective: the retained CE; the forgotten CE is only watched."""

from __future__ import annotations

import torch.nn.functional as F

from ..objective import Batch, Objective, Terms


class Finetune(Objective):
    embedding_terms = False

    def terms(self, b: Batch) -> Terms:
        return Terms(loss={"ce_r": b.ce_retained()},
                     watch={"ce_f": F.cross_entropy(b.head(b.f_f), b.y_f)})
