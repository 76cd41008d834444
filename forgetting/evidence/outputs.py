"""A model's outputs on the training and held-out images, computed once and read by every
attack (the forward passes dominate their cost)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..evaluate import collect_outputs


@dataclass
class Outputs:
    """Logits and the embedding feeding the head, per image, for one model."""

    train_logits: torch.Tensor
    train_features: torch.Tensor
    train_labels: np.ndarray
    heldout_logits: torch.Tensor
    heldout_features: torch.Tensor
    heldout_labels: np.ndarray

    def true_logprob(self, split: str) -> np.ndarray:
        """log p(true label | image): what a membership attack reads."""
        logits = getattr(self, f"{split}_logits").double()
        labels = torch.from_numpy(getattr(self, f"{split}_labels"))
        return torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1).numpy()


def model_outputs(model: nn.Module, train_ds, heldout_ds, device: torch.device) -> Outputs:
    tr = collect_outputs(model, train_ds, device, want_features=True)
    ho = collect_outputs(model, heldout_ds, device, want_features=True)
    return Outputs(tr["logits"], tr["features"], tr["labels"].numpy(),
                   ho["logits"], ho["features"], ho["labels"].numpy())
