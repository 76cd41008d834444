"""FG-OrIU (Feng et al., ICCV 2025): forgetting by feature and gradient orthogonality.

Before a request, SVD splits each block's feature space into a *forgetting* subspace (spanned by
the forgotten classes' features) and a *retained* one. Training then adds two forward terms to
the retained CE (and to the optional bounded forget CE and group sparsity of GS-LoRA, which the
method is built on):
    w_forget * sum_blocks ||Z_f P_f||_*        (forgotten features leave their subspace)
  + w_retain * sum_blocks ||Z_r - Z_r P_r P_r^T||_F   (retained features stay in theirs)
with Z the L2-normalised CLS-token output of each block. In the backward pass every LoRA A
gradient is projected onto the complement of the retained inputs of its layer, so an update
barely moves what the layer computes on retained images and cannot pull the forgotten classes
back through them. Across requests the subspaces adapt: the forgetting subspace of request t
merges the classes forgotten before (their images, while not purged) into the new one, and the
retained subspace is rebuilt on the classes still retained, so it contracts as classes go.

Read from the paper and the authors' public code (RAIAN08/FG-OrIU) and written here; where we
differ, deliberately:
- Energy: the rank keeps ``energy`` of the features' squared singular values (the usual
  gradient-projection rule); the authors take the SVD of the Gram matrix and count its squared
  singular values, i.e. the fourth powers, which keeps fewer directions.
- Gradient projection uses each layer's *own* input subspace (fc1: the LayerNorm'd block input,
  fc2: the hidden activation), where "orthogonal to the retained inputs" is exact; the authors
  use the block output's subspace for every LoRA matrix and reshape B's gradient into it. LoRA
  B's gradient lives in the output space and is left as it is here.
- The authors' shipped face script turns the forget CE off (``beta`` 0) and the group sparsity
  off (``alpha`` 0); here both stay options, chosen on validation (``benchmarks/tune.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ...lora import block_of
from ..gs_lora.objective import GSLoRA
from ..objective import Batch, Setup, Terms, taps


@dataclass
class Subspaces:
    """Orthonormal bases (columns), one per block: ``forget`` / ``retain`` in the block's output
    space; ``fc1`` / ``fc2``: the retained images' inputs of that block's FFN layers."""

    forget: list[torch.Tensor]
    retain: list[torch.Tensor]
    fc1: list[torch.Tensor]
    fc2: list[torch.Tensor]

    def to(self, device: torch.device | str) -> Subspaces:
        return Subspaces(*([b.to(device) for b in bases]
                           for bases in (self.forget, self.retain, self.fc1, self.fc2)))

    def dims(self) -> dict[str, list[int]]:
        """Each basis' rank (what the report and the run record show)."""
        return {k: [b.shape[1] for b in getattr(self, k)] for k in ("forget", "retain", "fc1",
                                                                      "fc2")}


def bases(rep: torch.Tensor, energy: float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal columns that hold ``energy`` of the rows of ``rep`` (n x d), by SVD.

    With ``prior`` (columns already kept), the span is extended, not replaced: only the part of
    ``rep`` outside ``prior`` is decomposed, and directions are added until prior + new hold
    ``energy`` of ``rep``: the merge of dynamic subspace adaptation."""
    rep = rep.float()
    total = rep.pow(2).sum()
    if prior is not None:
        resid = rep - rep @ prior @ prior.T
        need = energy * total - (total - resid.pow(2).sum())
    else:
        resid, need = rep, energy * total
    _, s, vh = torch.linalg.svd(resid, full_matrices=False)
    cum = torch.cumsum(s.pow(2), 0)
    k = 0 if need <= 0 else min(int(torch.searchsorted(cum, need).item()) + 1, len(s))
    new = vh[:k].T
    out = new if prior is None else torch.cat([prior, new], dim=1)
    if prior is not None and k:  # re-orthonormalise: the residual's SVD drifts in float32
        out = torch.linalg.qr(out).Q
    return out[:, :rep.shape[1]]


@torch.no_grad()
def _features(model, data: Dataset, device: torch.device, max_images: int, seed: int
              ) -> dict[str, list[torch.Tensor]]:
    """Per block, the output tokens (normalised, as the loss sees them) and the FFN inputs of
    up to ``max_images`` images of ``data`` (a seeded draw when there are more)."""
    if len(data) > max_images:
        g = torch.Generator().manual_seed(seed)
        data = Subset(data, torch.randperm(len(data), generator=g)[:max_images].tolist())
    parts: dict[str, list[list[torch.Tensor]]] = {"out": [], "fc1": [], "fc2": []}
    model.eval()
    for x, _ in DataLoader(data, batch_size=256):
        with taps(model.backbone, inputs=True) as got:
            model.backbone(x.to(device))
        for k in parts:
            parts[k].append([t.float() for t in got[k]])
    out = {k: [torch.cat(per_block) for per_block in zip(*v, strict=True)]
           for k, v in parts.items()}
    out["out"] = [F.normalize(t, dim=1) for t in out["out"]]
    return out


def subspaces(model, forget: Dataset, retained: Dataset, earlier: Dataset | None,
              energy: float, max_images: int, device: torch.device, seed: int = 0) -> Subspaces:
    """The request's subspaces from the *current* model: the forgetting one merged with the
    classes forgotten before (when their images are still there), the retained one rebuilt
    on the classes still retained."""
    f = _features(model, forget, device, max_images, seed)
    r = _features(model, retained, device, max_images, seed + 1)
    fb = [bases(t, energy) for t in f["out"]]
    if earlier is not None and len(earlier):
        o = _features(model, earlier, device, max_images, seed + 2)
        fb = [bases(t, energy, prior=p) for t, p in zip(o["out"], fb, strict=True)]
    return Subspaces(forget=fb, retain=[bases(t, energy) for t in r["out"]],
                     fc1=[bases(t, energy) for t in r["fc1"]],
                     fc2=[bases(t, energy) for t in r["fc2"]])


def forward_losses(outs: list[torch.Tensor], n_r: int, n_f: int, sub: Subspaces
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(forgetting term, retained term) over blocks, for a batch laid out [retained, forgotten,
    ...]: the nuclear norm of the forgotten features inside their old subspace, and the norm of
    the retained features outside theirs."""
    lf = lr = torch.zeros((), device=outs[0].device)
    for z, pf, pr in zip(outs, sub.forget, sub.retain, strict=True):
        z = F.normalize(z.float(), dim=1)
        zr, zf = z[:n_r], z[n_r:n_f]
        if len(zf):
            lf = lf + torch.linalg.matrix_norm(zf @ pf, ord="nuc")
        if len(zr):
            lr = lr + (zr - zr @ pr @ pr.T).norm()
    return lf, lr


def _lora_a(model: torch.nn.Module, sub: Subspaces):
    """(LoRA A weight, the retained-input basis of its layer) pairs."""
    for name, p in model.named_parameters():
        b = block_of(name)
        if b is not None and "lora_A" in name:
            yield p, (sub.fc1[b] if ".fc1." in name else sub.fc2[b])


def _off(m: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``m`` (rows in the input space) minus its part inside ``basis``' span."""
    return m - (m.float() @ basis @ basis.T).to(m.dtype)


@torch.no_grad()
def project_gradients(model: torch.nn.Module, sub: Subspaces) -> None:
    """Every LoRA A gradient (rank x in) minus its part inside the retained inputs' span."""
    for p, basis in _lora_a(model, sub):
        if p.grad is not None:
            p.grad.copy_(_off(p.grad, basis))


@torch.no_grad()
def lora_a_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters()
            if block_of(n) is not None and "lora_A" in n]


@torch.no_grad()
def project_step(model: torch.nn.Module, before: list[torch.Tensor], sub: Subspaces) -> None:
    """The optimiser's step on every LoRA A, minus its part inside the retained inputs' span.

    Adam divides each coordinate by its own running scale (and weight decay pulls along the
    weight itself), so a projected *gradient* still yields a step with a part inside the
    subspace; projecting the step makes the orthogonality the method relies on exact."""
    for (p, basis), old in zip(_lora_a(model, sub), before, strict=True):
        p.copy_(old + _off(p - old, basis))


class FGOrIU(GSLoRA):
    """GS-LoRA's terms plus ``w_forget * L_forget + w_retain * L_retain`` on the blocks'
    outputs, and the LoRA A updates projected off the retained inputs of their layers."""

    taps = True

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        oc = self.cfg.fg_oriu
        self.sub = subspaces(setup.model, setup.data.forget, setup.data.retained,
                             setup.data.earlier, oc.energy, oc.max_images, setup.device,
                             self.cfg.seed).to(setup.device)
        self._before: list[torch.Tensor] = []

    def terms(self, b: Batch) -> Terms:
        t = super().terms(b)
        lf, lr = forward_losses(b.taps["out"], b.n_r, b.n_f, self.sub)
        oc = self.cfg.fg_oriu
        t.loss["orth"] = oc.w_forget * lf + oc.w_retain * lr
        return t

    def before_step(self, peft_model: torch.nn.Module) -> None:
        if self.cfg.fg_oriu.project_gradients:
            project_gradients(peft_model, self.sub)
            self._before = lora_a_weights(peft_model)

    def after_step(self, peft_model: torch.nn.Module) -> None:
        if self.cfg.fg_oriu.project_gradients:
            project_step(peft_model, self._before, self.sub)

    def record(self) -> dict:
        return {"subspace_dims": self.sub.dims()}
