"""GS-LoRA(++) loss terms (method.md): bounded forgetting, group sparsity, prototype KL."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def bounded_forget_loss(ce_forgotten: torch.Tensor, bound: float | None) -> torch.Tensor:
    """ReLU(BND - CE): pushes forgotten CE up, and stops once it passes BND so it cannot explode.
    ``bound=None``: -CE, the unbounded gradient ascent of NegGrad+ (a baseline)."""
    return -ce_forgotten if bound is None else F.relu(bound - ce_forgotten)


def group_sparse_loss(groups: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Group lasso: sum over groups of the L2 norm of all the group's weights."""
    norms = [torch.sqrt(sum((p.pow(2).sum() for p in g), torch.zeros(())) + 1e-12)
             for g in groups if len(g)]
    return torch.stack(norms).sum() if norms else torch.zeros(())


def kl_to_prototype(vectors: torch.Tensor, prototypes: torch.Tensor,
                    direction: str = "p_to_proto") -> torch.Tensor:
    """Batch-mean KL between softmax(vectors) = p and softmax(prototypes), in log space.

    ``"p_to_proto"``: KL(p || proto), ours so far. ``"proto_to_p"``: KL(proto || p), the
    authors' code (``kl_div(log p, log proto, log_target=True)``). They differ most where it
    matters for the bounded forget term: on a 128-d embedding KL(p || proto) stayed under
    8 nats, below the bound of 18, so that term never switched off (issue 12)."""
    log_p = F.log_softmax(vectors, dim=-1)
    log_q = F.log_softmax(prototypes, dim=-1)
    if direction == "proto_to_p":
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    if direction != "p_to_proto":
        raise ValueError(f"KL direction must be 'p_to_proto' or 'proto_to_p', got {direction!r}")
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def prototype_loss(
    v_forget: torch.Tensor, proto_forget: torch.Tensor,
    v_retain: torch.Tensor | None, proto_retain: torch.Tensor | None,
    w_f: float, w_r: float, bound: float, direction: str = "p_to_proto",
) -> torch.Tensor:
    """w_f * ReLU(BND_pro - KL(forgotten, own prototype)) + w_r * KL(retained, own prototype)."""
    loss = w_f * F.relu(bound - kl_to_prototype(v_forget, proto_forget, direction))
    if w_r > 0 and v_retain is not None and proto_retain is not None and len(v_retain):
        loss = loss + w_r * kl_to_prototype(v_retain, proto_retain, direction)
    return loss
