"""Membership inference: does the model still behave as if it had trained on the forgotten images?

The recipe (the loss/confidence attack used in the unlearning literature, e.g. "MIA-efficacy"):
1. Per image, from the model's softmax: the loss on the true label, the confidence in it, the
   entropy and the top probability. Members (training images) tend to have low loss and
   entropy.
2. Fit a logistic regression (scikit-learn, standardised features, balanced classes) that
   tells the *retained* classes' training images (members) from their held-out images
   (non-members: validation and test splits together, so the AUCs below rest on as many
   images as possible; with the test split alone, AUC noise on digits was about ±0.05).
   The forgotten classes play no part in fitting it.
3. Apply it to the forgotten classes: ``member_rate`` is the fraction of their training images
   called "member"; ``auc`` is how well the attack's score separates their training images from
   their held-out images (0.5: indistinguishable, as for a model that never saw them).
A model that truly forgot should score like the retrain-from-scratch baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .evaluate import collect_outputs
from .evidence.probe import balanced_logistic


@dataclass
class MiaResult:
    auc: float | None  # forgotten train vs forgotten held-out images
    member_rate: float  # forgotten train images called "member"
    attack_auc: float  # the attack on the retained classes it was fitted on (its own strength)
    n_forgotten_train: int
    n_forgotten_heldout: int

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def features(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """[loss, confidence, entropy, top probability] per image."""
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    true = logp.gather(1, labels[:, None].long()).squeeze(1)
    loss = (-true).clamp(max=50.0)
    entropy = -(p * logp).sum(-1)
    feats = torch.stack([torch.log1p(loss), true.exp(), entropy, p.max(-1).values], 1)
    return feats.numpy()


def _features_of(model: torch.nn.Module, ds, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    out = collect_outputs(model, ds, device)
    return features(out["logits"], out["labels"]), out["labels"].numpy()


def membership_inference(model: torch.nn.Module, train_ds, heldout_ds, forget: Iterable[int],
                         device: torch.device, earlier: Iterable[int] = (), seed: int = 0
                         ) -> MiaResult:
    """Fit the attack on the retained classes, score the forgotten ones (see module doc).

    ``train_ds`` holds the images the model was trained on, ``heldout_ds`` images it never
    trained on (``ConcatDataset([val, test])``). ``earlier``: classes forgotten before, left out of fitting.
    """
    from sklearn.metrics import roc_auc_score  # (not at import: see balanced_logistic)

    forget = sorted(set(forget))
    model = model.to(device).eval()
    x_tr, y_tr = _features_of(model, train_ds, device)
    x_ho, y_ho = _features_of(model, heldout_ds, device)
    f_tr, f_ho = np.isin(y_tr, forget), np.isin(y_ho, forget)
    gone = forget + sorted(set(earlier))
    members, nonmembers = x_tr[~np.isin(y_tr, gone)], x_ho[~np.isin(y_ho, gone)]
    if len(members) == 0 or len(nonmembers) == 0 or not f_tr.any():
        raise ValueError("membership inference needs retained images in both splits and "
                         "forgotten training images")
    rng = np.random.default_rng(seed)
    if len(members) > len(nonmembers):  # balance, so "member" is not simply the majority
        members = members[rng.choice(len(members), len(nonmembers), replace=False)]
    x = np.concatenate([members, nonmembers])
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    attack = balanced_logistic(1000)
    attack.fit(x, y)
    attack_auc = float(roc_auc_score(y, attack.predict_proba(x)[:, 1]))
    score_tr = attack.predict_proba(x_tr[f_tr])[:, 1]
    auc = None
    if f_ho.any():
        score_ho = attack.predict_proba(x_ho[f_ho])[:, 1]
        labels = np.concatenate([np.ones(len(score_tr)), np.zeros(len(score_ho))])
        auc = float(roc_auc_score(labels, np.concatenate([score_tr, score_ho])))
    return MiaResult(auc=auc, member_rate=float((score_tr > 0.5).mean()), attack_auc=attack_auc,
                     n_forgotten_train=int(f_tr.sum()), n_forgotten_heldout=int(f_ho.sum()))
