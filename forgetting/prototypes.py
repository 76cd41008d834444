"""GS-LoRA++ class prototypes: the mean output of the *current* model per class.

The paper's text says logits; the authors' code (behind the published tables) averages the
embedding that feeds the head. Both are supported; the embedding is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import ConcatDataset

from .evaluate import collect_outputs
from .methods.gs_lora_pp import PrototypeConfig
from .preprocess import to_signed_unit


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


def augmented_views(ds, views: int):
    """``ds`` and ``views`` copies of it through RandAugment (torchvision's, on the stored
    uint8 image, before the model's transform): the authors average prototypes over augmented
    views in the few-shot setting, where k images make a noisy mean."""
    if views <= 0:
        return ds
    from torchvision.transforms import v2

    aug = v2.RandAugment()
    base = ds.transform
    copies = [ds.with_transform(lambda img, base=base: base(aug(img)) if base else
                                to_signed_unit(aug(img))) for _ in range(views)]
    return ConcatDataset([ds, *copies])


def request_prototypes(model, forget_ds, retained_ds, num_classes: int, device: torch.device,
                       cfg: PrototypeConfig, fewshot: bool, seed: int) -> Prototypes:
    """The prototypes of one request, from the images it may use (k-shot, missing classes);
    with ``cfg.augment_views`` in k-shot requests, over augmented views as well."""
    views = cfg.augment_views if fewshot else 0
    torch.manual_seed(seed)  # the RandAugment draws
    return compute_prototypes(model, ConcatDataset([augmented_views(forget_ds, views),
                                                    augmented_views(retained_ds, views)]),
                              num_classes, device, cfg.source)
