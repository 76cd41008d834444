"""Membership inference, calibrated per example (offline LiRA, Carlini et al., S&P 2022).

The question: does the model behave, on a forgotten class's *training* images, differently
from how it behaves on the same class's held-out images? A population attack (``mia.py``)
judges every image by one threshold, so an image that is easy for any model looks like a
member. Here each image is judged against its own difficulty: the model's logit-scaled
confidence in the true label, ``phi = log(p / (1 - p))``, minus its mean over *reference
models that never trained on that image*. (With few references LiRA uses one global variance,
so dividing by it would change no ranking; it is left out.) Read as TPR at 1 % and 0.1 % FPR.

Reference models: small models trained from scratch by the pretraining recipe (fewer epochs),
each on a random half of the training images, complementary halves in pairs, so every training
image is "out" for half of them and every held-out image for all. They depend only on the
dataset version and config, so they are trained once per workspace and reused by every request,
which makes them cheap. The retrain reference cannot serve: it is the model every figure is
compared with (a target calibrated by itself scores a flat 0). Head-only or LoRA references on
the original backbone were rejected because they inherit the backbone's memory of every image.
RMIA's probability ratio (Zarifzadeh et al., 2024) was measured too, on a tiny ViT that
memorised 40 digits per class: AUC 0.52 where this score reached 0.67 (class 0) and 0.78
(class 8), since a saturated probability hides the differences the logit scale keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..files import write_atomic
from ..model import create_model
from ..pretrain import augmented, fit
from .outputs import Outputs, model_outputs
from .stats import Figure, auc, bootstrap_se, tpr_at_fpr


@dataclass
class References:
    """Every reference model's log p(true label) per image, and which images each trained on."""

    train: np.ndarray  # (models, train images)
    heldout: np.ndarray  # (models, held-out images)
    member: np.ndarray  # (models, train images) bool

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # np.savez would add ".npz" to a temp name
                np.savez(f, train=self.train, heldout=self.heldout, member=self.member)
        write_atomic(path, write)

    @classmethod
    def load(cls, path: Path) -> References:
        with np.load(path, allow_pickle=False) as z:  # never unpickle a file
            return cls(z["train"], z["heldout"], z["member"])


def train_references(model_cfg: ModelConfig, num_classes: int, train_ds, val_ds, heldout_ds,
                     cfg: TrainConfig, device: torch.device, n: int = 4, epochs: int | None = None,
                     seed: int = 0) -> References:
    """``n`` (even) reference models on complementary random halves of ``train_ds``."""
    if n < 2 or n % 2:
        raise ValueError(f"reference models come in complementary pairs: got {n}")
    cfg = cfg.model_copy(update={"epochs": epochs or cfg.epochs})
    rng = np.random.default_rng(seed)
    member = np.zeros((n, len(train_ds)), dtype=bool)
    train_lp, heldout_lp = [], []
    for i in range(n):
        if i % 2 == 0:
            half = rng.permutation(len(train_ds))[: len(train_ds) // 2]
            member[i, half] = True
        else:
            member[i] = ~member[i - 1]
        torch.manual_seed(cfg.seed + 1000 + i)
        res = fit(create_model(model_cfg, num_classes),
                  augmented(train_ds.subset(np.flatnonzero(member[i])), model_cfg, cfg),
                  val_ds, cfg.model_copy(update={"seed": cfg.seed + 1000 + i}), device,
                  progress=False, desc=f"reference {i + 1}/{n}")
        out = model_outputs(res.model, train_ds, heldout_ds, device)
        train_lp.append(out.true_logprob("train"))
        heldout_lp.append(out.true_logprob("heldout"))
    return References(np.stack(train_lp), np.stack(heldout_lp), member)


def logit_confidence(logp: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) from log p, stable near p = 1."""
    return logp - np.log(-np.expm1(np.minimum(logp, -1e-15)))


def lira_scores(out: Outputs, refs: References | None, split: str) -> np.ndarray:
    """phi(model) - mean phi(references that did not train on the image), per image; without
    reference models, phi(model) alone (the uncalibrated loss attack)."""
    if refs is None:
        return logit_confidence(out.true_logprob(split))
    ref = logit_confidence(getattr(refs, split))
    outside = ~refs.member if split == "train" else np.ones_like(ref, dtype=bool)
    mean_out = (ref * outside).sum(0) / outside.sum(0)
    return logit_confidence(out.true_logprob(split)) - mean_out


def membership(out: Outputs, refs: References | None, classes: list[int], seed: int = 0) -> dict:
    """The attack on ``classes``: their training images are the members, their held-out
    images the non-members. Headline figure: TPR at 1 % FPR (the AUC below 100 non-members).

    Without reference models (the never-seen reference: ``never_seen.py``) the scores are
    uncalibrated and the figure is their AUC, whose chance level (0.5) is what a class the
    model never trained on gives: the never-seen classes, measured the same way, are the bar."""
    m = lira_scores(out, refs, "train")[np.isin(out.train_labels, classes)]
    nm = lira_scores(out, refs, "heldout")[np.isin(out.heldout_labels, classes)]
    if len(m) == 0 or len(nm) == 0:
        raise ValueError("membership inference needs training and held-out images of "
                         f"classes {classes}")
    scores, strata = np.r_[m, nm], np.r_[np.ones(len(m)), np.zeros(len(nm))]

    def on(stat):
        return lambda idx: stat(scores[idx][strata[idx] == 1], scores[idx][strata[idx] == 0])

    tpr1 = lambda a, b: tpr_at_fpr(a, b, 0.01)  # noqa: E731
    auc_se = bootstrap_se(on(auc), len(scores), seed, strata=strata)
    # below 100 non-members "1 % FPR" allows no false positive: the figure then rests on the
    # single highest non-member and its bootstrap noise spans most of [0, 1] (measured: +-0.14
    # on 72 images), so the verdict reads the AUC there, and says so
    if refs is None:
        fig = Figure(auc(m, nm), auc_se, "AUC, uncalibrated: no reference models")
    elif len(nm) >= 100:
        fig = Figure(tpr1(m, nm), bootstrap_se(on(tpr1), len(scores), seed, strata=strata),
                     "TPR at 1 % FPR, LiRA")
    else:
        fig = Figure(auc(m, nm), auc_se,
                     f"AUC, LiRA ({len(nm)} non-members: too few for 1 % FPR)")
    return {"figure": fig.as_dict(),
            "tpr_at_1pct_fpr": tpr1(m, nm), "tpr_at_0.1pct_fpr": tpr_at_fpr(m, nm, 0.001),
            "auc": auc(m, nm), "auc_se": auc_se, "members": int(len(m)),
            "nonmembers": int(len(nm)),
            "reference_models": int(len(refs.train)) if refs is not None else 0}
