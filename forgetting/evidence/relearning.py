"""Relearning: how fast do a few images bring a forgotten class back?

Unlearning that only hides a class comes back after a few fine-tuning steps; a model that
never learnt it needs many more. The attacker fine-tunes every weight (Adam) on ``shots``
training images of each forgotten class mixed with as many retained-class images (without
them any model learns to answer "forgotten class" for everything within a step, which says
nothing), and counts the steps until held-out Acc_f reaches ``target``. Repeated over draws of
the images; the honest bar is the retrained model's count, the original's is 0.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..datasets import k_shot
from ..runtime import autocast
from .stats import Figure

PROBES = 200  # held-out images whose Acc_f a step is judged by


def _stack(ds, device):
    """Every item as one batch (its own generator: no draw from the global RNG)."""
    x, y = next(iter(DataLoader(ds, batch_size=max(len(ds), 1), generator=torch.Generator())))
    return x.to(device), y.to(device)


def _acc(model, x, y, batch: int = 512) -> float:
    with torch.no_grad():
        hits = 0
        for i in range(0, len(x), batch):
            with autocast(x.device):
                hits += int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
    return hits / len(x)


def relearn_steps(model: torch.nn.Module, train_ds, heldout_ds, classes: list[int],
                  device: torch.device, shots: int = 4, max_steps: int = 50, lr: float = 1e-4,
                  target: float = 0.5, seed: int = 0) -> int:
    """Steps until held-out Acc_f >= ``target``; ``max_steps + 1`` when it never gets there."""
    rng = np.random.default_rng(seed)
    fgt = k_shot(train_ds, shots, seed, classes)
    others = np.flatnonzero(~np.isin(train_ds.labels, classes))
    ret = train_ds.subset(np.sort(rng.choice(others, min(len(fgt), len(others)), replace=False)))
    (xf, yf), (xr, yr) = _stack(fgt, device), _stack(ret, device)
    x, y = torch.cat([xf, xr]), torch.cat([yf, yr])
    # the held-out Acc_f is read after every step: a seeded draw of at most PROBES images
    # keeps that read from costing more than the steps (measured on Fashion-MNIST: 1,200
    # held-out images per class made the attack the largest part of a request's evidence)
    held = np.flatnonzero(np.isin(heldout_ds.labels, classes))
    if len(held) > PROBES:
        held = np.sort(rng.choice(held, PROBES, replace=False))
    probe = heldout_ds.subset(held)
    xp, yp = _stack(probe, device)
    m = copy.deepcopy(model).to(device)
    for p in m.parameters():
        p.requires_grad_(True)
    m.eval()  # no dropout: the count should not depend on its draws
    if _acc(m, xp, yp) >= target:
        return 0
    torch.manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for step in range(1, max_steps + 1):
        with autocast(device):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if _acc(m, xp, yp) >= target:
            return step
    return max_steps + 1


def relearning(model: torch.nn.Module, train_ds, heldout_ds, classes: list[int],
               device: torch.device, shots: int = 4, max_steps: int = 50, lr: float = 1e-4,
               repeats: int = 3, seed: int = 0) -> dict:
    """Headline figure: mean steps over ``repeats`` draws (lower: the class returns faster)."""
    steps = [relearn_steps(model, train_ds, heldout_ds, classes, device, shots, max_steps, lr,
                           seed=seed + r) for r in range(repeats)]
    se = float(np.std(steps, ddof=1) / np.sqrt(len(steps))) if len(steps) > 1 else None
    return {"figure": Figure(float(np.mean(steps)), se).as_dict(), "steps": steps,
            "shots": shots, "max_steps": max_steps, "lr": lr,
            "censored": sum(s > max_steps for s in steps)}
