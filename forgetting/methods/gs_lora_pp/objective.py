"""GS-LoRA++'s objective: GS-LoRA's plus the prototype term (method.md)

    L_pro = w_f * ReLU(BND_pro - KL(forgotten, own prototype)) + w_r * KL(retained, own prototype)

with the prototypes the current model's mean output per class over the images this request
may use (``forgetting/prototypes.py``), and KL between softmax distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...prototypes import Prototypes, request_prototypes
from ..gs_lora.objective import GSLoRA
from ..objective import Batch, Setup, Terms


def kl_to_prototype(vectors: torch.Tensor, prototypes: torch.Tensor,
                    direction: str = "p_to_proto") -> torch.Tensor:
    """Batch-mean KL between softmax(vectors) = p and softmax(prototypes), in log space.

    ``"p_to_proto"``: KL(p || proto), ours. ``"proto_to_p"``: KL(proto || p), the authors'
    code (``kl_div(log p, log proto, log_target=True)``). They differ most where it matters for
    the bounded forget term: on a 128-d embedding KL(p || proto) stayed under 8 nats, below
    the bound of 18, so that term never switched off."""
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


class GSLoRAPlusPlus(GSLoRA):
    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        pc = self.cfg.prototypes
        self.w_f = pc.w_f if not setup.fewshot else pc.w_f_fewshot
        self.kl_direction = pc.kl_direction if not setup.fewshot else pc.kl_direction_fewshot
        self.protos: Prototypes | None = None
        if setup.prototypes is not None:
            self.protos = setup.prototypes.to(setup.device)
        elif pc.enabled:
            # from the images available to this request only (k-shot, missing classes)
            self.protos = request_prototypes(
                setup.model, setup.data.forget, setup.data.retained, setup.num_classes,
                setup.device, pc, setup.fewshot, self.cfg.seed).to(setup.device)

    def terms(self, b: Batch) -> Terms:
        t = super().terms(b)
        if self.protos is not None:
            pc = self.cfg.prototypes
            if self.protos.source == "embedding":
                v_r, v_f = b.f_r, b.f_f
            else:
                v_r = b.head(b.f_r, b.y_r)
                v_f = b.head(b.f_f, b.y_f if self.cfg.forget_margin else None)
            t.loss["pro"] = prototype_loss(v_f, self.protos.vectors[b.y_f], v_r,
                                           self.protos.vectors[b.y_r], self.w_f, pc.w_r,
                                           pc.bound, self.kl_direction)
        return t
