"""Random views of a request's images, drawn anew at every step.

A k-shot request rests its retained classes on k images each: trained on exactly those, the
LoRA fits them and drifts elsewhere, and the retained-embedding distillation
(``forget.embedding.keep_retained``) holds the parent's embedding at k points per class only.
Shifted (and, where the data allow it, mirrored) views put the same terms on a neighbourhood
of each image. The parent sees the same view, so what is distilled is still the parent.

Hand-written rather than torchvision's ``v2.RandomCrop``: a v2 transform draws one crop per
call, the same for a whole batch, and a per-image loop costs a Python call per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AugmentConfig


class BatchViews:
    """Per-image random shifts by up to ``shift`` pixels (edges replicated) and, with
    ``hflip``, mirroring at random; seeded, on the CPU, so a run repeats on any device."""

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.shift, self.hflip, self.repeats = cfg.shift, cfg.hflip, cfg.repeats
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.shift
        rows = torch.arange(h)[None, :].expand(n, h)
        cols = torch.arange(w)[None, :].expand(n, w)
        if p:
            x = F.pad(x, (p, p, p, p), mode="replicate")
            rows = rows + torch.randint(0, 2 * p + 1, (n, 1), generator=self.g)
            cols = cols + torch.randint(0, 2 * p + 1, (n, 1), generator=self.g)
        if self.hflip:
            flip = torch.rand(n, generator=self.g) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        return x[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]

    def repeat(self, *parts: tuple[torch.Tensor, torch.Tensor]
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each (images, labels) part with every image ``repeats`` times in a row, so that
        each copy becomes a view of its own."""
        return [(x.repeat_interleave(self.repeats, 0), y.repeat_interleave(self.repeats, 0))
                for x, y in parts]


def batch_views(cfg: AugmentConfig, seed: int) -> BatchViews | None:
    return BatchViews(cfg, seed) if cfg.active else None
