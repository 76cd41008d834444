"""GS-LoRA's objective (method.md). Per step, with retained (x_r, y_r), forgotten (x_f, y_f)
and, while earlier requests' classes still have images, earlier-forgotten (x_o, y_o):

    L = CE(x_r, y_r) + beta * ReLU(BND - CE(x_f, y_f)) + alpha * sum_g ||theta_g||_2
        + beta_earlier * ReLU(BND_o - CE(x_o, y_o))

The last term is zero while the earlier classes stay forgotten and pushes back only if this
request's LoRA starts to revive them (without it, 4-shot requests on the digits brought
Acc_o to 46 % by the third step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..objective import Batch, Objective, Terms


def bounded_forget_loss(ce_forgotten: torch.Tensor, bound: float | None) -> torch.Tensor:
    """ReLU(BND - CE): pushes forgotten CE up, and stops once it passes BND so it cannot explode.
    ``bound=None``: -CE, the unbounded gradient ascent of NegGrad+ (a baseline)."""
    return -ce_forgotten if bound is None else F.relu(bound - ce_forgotten)


def group_sparse_loss(groups: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Group lasso: sum over groups of the L2 norm of all the group's weights."""
    norms = [torch.sqrt(sum((p.pow(2).sum() for p in g), torch.zeros(())) + 1e-12)
             for g in groups if len(g)]
    return torch.stack(norms).sum() if norms else torch.zeros(())


class GSLoRA(Objective):
    sparse = True

    @classmethod
    def uses_earlier(cls, cfg) -> bool:
        return cfg.beta_earlier > 0 or super().uses_earlier(cfg)

    def ce_forgotten(self, b: Batch) -> torch.Tensor:
        """With a margin head, the forgotten CE with its margin (authors) or without (ours)."""
        return F.cross_entropy(b.head(b.f_f, b.y_f if self.cfg.forget_margin else None), b.y_f)

    def terms(self, b: Batch) -> Terms:
        cfg = self.cfg
        ce_f = self.ce_forgotten(b)
        structure = group_sparse_loss(b.groups)
        t = Terms(loss={"ce_r": b.ce_retained(),
                        "forget": cfg.beta * bounded_forget_loss(ce_f, cfg.bound),
                        "sparsity": b.alpha * structure},
                  watch={"ce_f": ce_f, "structure": structure})
        if len(b.y_o):
            ce_o = F.cross_entropy(b.head(b.f_o), b.y_o)
            t.loss["earlier"] = cfg.beta_earlier * bounded_forget_loss(ce_o, cfg.bound_earlier)
            t.watch["ce_o"] = ce_o
        else:  # no earlier images (none asked, or purged): the term is off, and shown as 0
            t.watch["ce_o"] = ce_f.new_zeros(())
        return t
