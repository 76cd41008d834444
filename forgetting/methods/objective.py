"""What every method's objective implements, and what the trainer hands it.

The trainer (``forgetting/train.py``) owns the loop: data, LoRA, optimiser, schedule, EMA,
epoch selection, the stored adapter. Per step it runs one forward of the batch laid out
[retained, forgotten, earlier-forgotten] and asks the method's ``Objective`` for its loss
terms; the loss is their sum, in the order given (so a run repeats bit for bit). Hooks around
the optimiser step let a method shape the update (FG-OrIU projects it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import ForgetConfig
from ..datasets import RequestData
from ..model import Classifier
from ..prototypes import Prototypes


@dataclass
class Setup:
    """The request as an objective sees it before training."""

    model: Classifier  # the parent: the LoRA model trains on a copy, this one stays as it is
    data: RequestData  # the images this request may use (k per class in k-shot requests)
    forget: list[int]
    retained: list[int]
    earlier: list[int]
    missing: list[int]
    cfg: ForgetConfig
    device: torch.device
    prototypes: Prototypes | None = None  # computed by the pipeline beforehand (GS-LoRA++)
    base: Classifier | None = None  # the chain's base model when ``model`` is a later version

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def fewshot(self) -> bool:
        return self.cfg.shots is not None


@dataclass
class Batch:
    """One step's forward: the backbone's embedding of [retained, forgotten, earlier] images
    (float32), their labels, the head, the LoRA groups and this epoch's sparsity weight."""

    x: torch.Tensor
    feats: torch.Tensor
    y_r: torch.Tensor
    y_f: torch.Tensor
    y_o: torch.Tensor
    head: torch.nn.Module
    groups: Sequence[Sequence[torch.nn.Parameter]]
    alpha: float
    taps: dict | None = None  # the blocks' outputs, for objectives with ``taps = True``

    @property
    def n_r(self) -> int:
        return len(self.y_r)

    @property
    def n_f(self) -> int:
        return len(self.y_r) + len(self.y_f)

    @property
    def f_r(self) -> torch.Tensor:
        return self.feats[:self.n_r]

    @property
    def f_f(self) -> torch.Tensor:
        return self.feats[self.n_r:self.n_f]

    @property
    def f_o(self) -> torch.Tensor:
        return self.feats[self.n_f:]

    def ce_retained(self) -> torch.Tensor:
        """Cross-entropy of the retained images (with a margin head's margin, as trained)."""
        return F.cross_entropy(self.head(self.f_r, self.y_r), self.y_r)


@dataclass
class Terms:
    """``loss``: weighted terms whose sum is the loss; ``watch``: unweighted figures shown per
    epoch (the forgotten classes' CE, the group norms' sum)."""

    loss: dict[str, torch.Tensor]
    watch: dict[str, torch.Tensor] = field(default_factory=dict)

    def total(self) -> torch.Tensor:
        return sum(self.loss.values())  # in insertion order: the same floats every run


class Objective:
    """A method's loss and hooks. Subclasses set the class flags and override ``terms``."""

    # has a group-sparse term: epochs before its warm-up ends do not compete in selection
    sparse: ClassVar[bool] = False
    # needs each block's output for its loss (hooks run on the eager, uncompiled backbone)
    taps: ClassVar[bool] = False
    # takes the embedding terms (forget.embedding, forgetting/methods/embedding.py) when they
    # are on; off for the baselines, which are defined by their loss alone
    embedding_terms: ClassVar[bool] = True

    def __init__(self, setup: Setup) -> None:
        self.setup, self.cfg = setup, setup.cfg

    @classmethod
    def uses_earlier(cls, cfg: ForgetConfig) -> bool:
        """Trains on images of classes forgotten by earlier requests (the embedding terms keep
        them out of the embedding; GS-LoRA's guard keeps them from reviving): they are drawn,
        and their loader built, only then."""
        return cls.embedding_terms and cfg.embedding.active

    def terms(self, b: Batch) -> Terms:
        """The method's own terms (the trainer adds the embedding terms after them)."""
        raise NotImplementedError

    def before_step(self, peft_model: torch.nn.Module) -> None:
        """After backward, before the optimiser steps: gradients may be changed here."""

    def after_step(self, peft_model: torch.nn.Module) -> None:
        """After the optimiser's step: the weights may be corrected here."""

    def record(self) -> dict:
        """What the adapter's training summary keeps of this method's set-up."""
        return {}


def _token(x: torch.Tensor, prefix: int) -> torch.Tensor:
    """The CLS token of (batch, tokens, dim); the token mean for a model without one."""
    return x[:, 0] if prefix > 0 else x.mean(dim=1)


@contextmanager
def taps(backbone: torch.nn.Module, inputs: bool = False) -> Iterator[dict[str, list]]:
    """Forward hooks on a timm ViT: each block's output token (``"out"``) and, with ``inputs``,
    each FFN layer's input token (``"fc1"``, ``"fc2"``), in block order, for one forward."""
    got: dict[str, list] = {"out": [], "fc1": [], "fc2": []}
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    handles = []
    for block in backbone.blocks:
        handles.append(block.register_forward_hook(
            lambda _m, _a, out: got["out"].append(_token(out, prefix))))
        if inputs:
            for fc in ("fc1", "fc2"):
                layer = getattr(block.mlp, fc)
                # PEFT wraps the Linear; its own forward still receives the layer's input
                handles.append(layer.register_forward_pre_hook(
                    lambda _m, args, fc=fc: got[fc].append(_token(args[0], prefix))))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()
