"""Forgetting that reaches the embedding: two terms every forgetting method may add.

A head-only change (the forgotten rows' logits pushed down) leaves the embedding as it was,
and a face-recognition system matches embeddings: its gallery still names the person. A model
retrained without a class maps that class's images near the retained classes they resemble,
spread among them rather than in a cluster of their own (on the digits, k-NN identification
of five forgotten classes: 0.54 for a retrained model, 0.92 for GS-LoRA++ without these terms).
For the forgotten images of this request and, while their images remain, of earlier ones:

- ``relabel``: cross-entropy toward the retained class the *parent* ranks highest for the
  image, the class a retrained model would most likely call it (the parent's logits over the
  retained classes stand in for the retrained model's, which we do not have);
- ``uniformity``: within each forgotten class, log E exp(-t ||z_i - z_j||^2) over pairs of
  normalised embeddings (Wang & Isola's uniformity loss, 2020), which spreads the class over
  the sphere so that its images are no longer each other's nearest neighbours;
and, for the retained images, what moving the forgotten ones must not cost:
- ``keep_retained``: 1 - cos between the embedding and the parent's (distillation), or, with
  ``anchor: base``, the chain's base model's: each version held to the one before lets the
  retained embedding drift a little further with every request, each held to the base does not.

Measured against candidates on the validation split (benchmarks/results/embedding.json):
pulling toward the nearest retained image or prototype, or pushing off the class centroid,
left identification where it was; a mean-cosine dispersion over all forgotten images at once
separated the classes from each other and raised it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime import autocast
from .objective import Batch, Setup


class EmbeddingForgetting:
    def __init__(self, setup: Setup) -> None:
        self.cfg = setup.cfg.embedding
        self.parent = setup.model  # unchanged: the LoRA model trains on a copy
        # the first request's parent is the base
        self.anchor = (setup.base if self.cfg.anchor == "base" and setup.base is not None
                       else self.parent)
        self.retained = torch.tensor(setup.retained, device=setup.device)

    def terms(self, b: Batch) -> dict[str, torch.Tensor]:
        cfg, out = self.cfg, {}
        with torch.no_grad(), autocast(b.x.device):
            parent = self.parent.embed(b.x).float()
            held = (parent[:b.n_r] if self.anchor is self.parent
                    else self.anchor.embed(b.x[:b.n_r]).float())
        f_gone, y_gone = b.feats[b.n_r:], torch.cat([b.y_f, b.y_o])
        if cfg.relabel > 0:
            out["relabel"] = cfg.relabel * F.cross_entropy(b.head(f_gone),
                                                           self.targets(parent[b.n_r:]))
        if cfg.uniformity > 0:
            out["uniformity"] = cfg.uniformity * uniformity(f_gone, y_gone, cfg.temperature)
        if cfg.keep_retained > 0 and b.n_r:
            out["keep_retained"] = cfg.keep_retained * (
                1 - F.cosine_similarity(b.f_r, held, dim=1)).mean()
        return out

    @torch.no_grad()
    def targets(self, parent_feats: torch.Tensor) -> torch.Tensor:
        """The retained class the parent ranks highest for each image."""
        logits = self.parent.head(parent_feats)
        return self.retained[logits[:, self.retained].argmax(1)]


def uniformity(feats: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """log of the mean over same-class pairs of exp(-t ||z_i - z_j||^2), z normalised; 0 when
    no class has two images in the batch."""
    z = F.normalize(feats, dim=1)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(z), dtype=torch.bool,
                                                             device=z.device)
    if not same.any():
        return feats.sum() * 0.0
    d2 = (2 - 2 * (z @ z.T))[same]
    return torch.logsumexp(-t * d2, 0) - torch.log(torch.tensor(float(d2.numel())))
