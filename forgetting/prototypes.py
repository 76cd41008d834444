"""GS-LoRA++ class prototypes: the mean output of the *current* model per class.

The paper's text says logits; the authors' code (behind the published tables) averages the
embedding that feeds the head. Both are supported; the embedding is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .evaluate import collect_outputs


@dataclass
class Prototypes:
    vectors: torch.Tensor  # (num_classes, dim); rows of classes without images are zero
    present: torch.Tensor  # (num_classes,) bool: the class had images to average
    source: str

    def to(self, device: torch.device) -> Prototypes:
        return Prototypes(self.vectors.to(device), self.present.to(device), self.source)

    def save(self, path: str | Path) -> None:
        save_file({"vectors": self.vectors.cpu().contiguous(), "present": self.present.cpu()},
                  path, metadata={"source": self.source})

    @classmethod
    def load(cls, path: str | Path) -> Prototypes:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            source = (f.metadata() or {}).get("source", "embedding")
        t = load_file(path)
        return cls(t["vectors"], t["present"].bool(), source)


def compute_prototypes(model, ds, num_classes: int, device: torch.device,
                       source: str = "embedding") -> Prototypes:
    if source not in ("embedding", "logits"):
        raise ValueError(f"prototype source must be 'embedding' or 'logits', got {source!r}")
    out = collect_outputs(model, ds, device, want_features=source == "embedding")
    v = out["features"] if source == "embedding" else out["logits"]
    labels = out["labels"]
    sums = torch.zeros(num_classes, v.shape[-1]).index_add_(0, labels, v)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    vectors = torch.where(present[:, None], sums / counts.clamp(min=1)[:, None], sums)
    return Prototypes(vectors, present, source)
