"""GS-LoRA(++) loss terms (method.md): bounded forgetting, group sparsity, prototype KL."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def bounded_forget_loss(ce_forgotten: torch.Tensor, bound: float) -> torch.Tensor:
    """ReLU(BND - CE): pushes forgotten CE up, and stops once it passes BND so it cannot explode."""
    return F.relu(bound - ce_forgotten)


def group_sparse_loss(groups: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Group lasso: sum over groups of the L2 norm of all the group's weights."""
    norms = [torch.sqrt(sum((p.pow(2).sum() for p in g), torch.zeros(())) + 1e-12)
             for g in groups if len(g)]
    return torch.stack(norms).sum() if norms else torch.zeros(())


def kl_to_prototype(vectors: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(softmax(vectors) || softmax(prototypes)), computed in log space."""
    log_p = F.log_softmax(vectors, dim=-1)
    log_q = F.log_softmax(prototypes, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def prototype_loss(
    v_forget: torch.Tensor, proto_forget: torch.Tensor,
    v_retain: torch.Tensor | None, proto_retain: torch.Tensor | None,
    w_f: float, w_r: float, bound: float,
) -> torch.Tensor:
    """w_f * ReLU(BND_pro - KL(forgotten || own prototype)) + w_r * KL(retained || own prototype)."""
    loss = w_f * F.relu(bound - kl_to_prototype(v_forget, proto_forget))
    if w_r > 0 and v_retain is not None and proto_retain is not None and len(v_retain):
        loss = loss + w_r * kl_to_prototype(v_retain, proto_retain)
    return loss
