"""Supervised training of a whole classifier: the base model, and the retrain-from-scratch
baseline (same routine on the remaining classes only, trained to convergence)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader

from .config import ModelConfig, TrainConfig
from .datasets import BlockShuffleSampler, ParquetImageDataset, block_window
from .evaluate import accuracy, collect_outputs
from .model import Classifier, create_model
from .preprocess import train_transform
from .progress import progress_bar
from .runtime import autocast, compiled, loader_options, to_device


def seeded_loader(ds, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False,
                  device: torch.device | None = None) -> DataLoader:
    """A seeded loader; over a dataset bigger than its row-group cache the shuffle is the
    block shuffle (``BlockShuffleSampler``), which decodes each row group about once an
    epoch instead of for almost every batch (smaller datasets keep the uniform shuffle, and
    their runs stay bit for bit what they were)."""
    g = torch.Generator().manual_seed(seed)
    opts = loader_options(device) if device is not None else {}
    batch = min(batch_size, max(len(ds), 1))
    if shuffle and isinstance(ds, ParquetImageDataset) and ds.decoded_bytes() > ds.cache_limit:
        sampler = BlockShuffleSampler(ds, block_window(ds), seed)
        return DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=drop_last, **opts)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g, drop_last=drop_last,
                      **opts)


@dataclass
class FitResult:
    model: Classifier
    best_epoch: int
    val_acc: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def fit(model: Classifier, train_ds, val_ds, cfg: TrainConfig, device: torch.device,
        classes: Iterable[int] | None = None, progress: bool = True, desc: str = "pretrain",
        ) -> FitResult:
    """AdamW + timm cosine schedule with warm-up; keeps the epoch with the best val accuracy.

    ``classes`` limits training and selection to those classes (the retrain baseline).
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if classes is not None:
        classes = sorted(set(classes))
        train_ds, val_ds = train_ds.with_classes(classes), val_ds.with_classes(classes)
    if len(train_ds) == 0:
        raise ValueError("no training images")
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = seeded_loader(train_ds, cfg.batch_size, cfg.seed,
                           drop_last=len(train_ds) > cfg.batch_size, device=device)
    forward = compiled(model)
    steps = cfg.epochs * len(loader)
    sched = CosineLRScheduler(opt, t_initial=steps, lr_min=cfg.min_lr,
                              warmup_t=cfg.warmup_epochs * len(loader), warmup_lr_init=cfg.lr / 100,
                              t_in_epochs=False)
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history, step = [], 0
    bar = progress_bar(cfg.epochs, desc, enabled=progress)
    for epoch in bar:
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # read once per epoch
        for x, y in loader:
            x, y = to_device(x, device), y.to(device, non_blocking=True)
            with autocast(device):
                logits = forward(x, y)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
            total += loss.detach()
        total = float(total)
        out = collect_outputs(model, val_ds, device)
        acc = accuracy(out["logits"].argmax(-1).numpy(), out["labels"].numpy(),
                       np.unique(out["labels"].numpy()))
        history.append({"epoch": epoch, "loss": total / len(loader), "val_acc": acc})
        bar.set_postfix(loss=f"{total / len(loader):.3f}", val_acc=f"{acc:.3f}")
        if acc > best[0]:
            best = (acc, epoch, copy.deepcopy(model.state_dict()))
    bar.close()
    model.load_state_dict(best[2])
    model.eval()
    return FitResult(model, best[1], best[0], time.perf_counter() - t0, history)


def augmented(train_ds: ParquetImageDataset, model_cfg: ModelConfig, cfg: TrainConfig
              ) -> ParquetImageDataset:
    """The training images through timm's training transform when ``cfg.augment``."""
    if not cfg.augment:
        return train_ds
    return train_ds.with_transform(train_transform(model_cfg, cfg, train_ds.info.image_size))


def pretrain(model_cfg: ModelConfig, num_classes: int, train_ds, val_ds, cfg: TrainConfig,
             device: torch.device, progress: bool = True) -> FitResult:
    torch.manual_seed(cfg.seed)
    return fit(create_model(model_cfg, num_classes), augmented(train_ds, model_cfg, cfg), val_ds,
               cfg, device, progress=progress)


def retrain_baseline(model_cfg: ModelConfig, num_classes: int, train_ds, val_ds,
                     cfg: TrainConfig, device: torch.device, remaining: Iterable[int],
                     progress: bool = True) -> FitResult:
    """The gold standard: a fresh model of the same shape trained only on the remaining
    classes' images (the removed classes' head rows only ever act as negatives)."""
    torch.manual_seed(cfg.seed)
    return fit(create_model(model_cfg, num_classes), augmented(train_ds, model_cfg, cfg), val_ds,
               cfg, device, classes=remaining, progress=progress, desc="retrain")
