"""Identification in embedding space: the face-recognition view of forgetting.

A recognition system rarely reads the classifier head: it enrols a gallery of embeddings
and names a probe image by its nearest gallery entries (or the nearest class centroid). If
the forgotten people's embeddings still sit together, the system still recognises them, with
their logit gone. Gallery: every training image's embedding, the forgotten classes' included
(the images an operator enrolled); probes: the forgotten classes' held-out images; cosine
similarity. Headline figure: k-NN accuracy on them; centroid accuracy beside it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .outputs import Outputs
from .stats import Figure, bootstrap_se


def identification(out: Outputs, classes: list[int], k: int = 5, seed: int = 0) -> dict:
    probes = np.isin(out.heldout_labels, classes)
    if not probes.any():
        raise ValueError(f"identification needs held-out images of classes {classes}")
    gallery = F.normalize(out.train_features.double(), dim=1)
    q = F.normalize(out.heldout_features[torch.from_numpy(probes)].double(), dim=1)
    truth = out.heldout_labels[probes]
    labels = torch.from_numpy(out.train_labels)
    n_cls = int(max(out.train_labels.max(), out.heldout_labels.max())) + 1
    sims = q @ gallery.T
    top = sims.topk(min(k, len(labels)), dim=1)
    votes = torch.zeros(len(q), n_cls, dtype=torch.float64)
    votes.scatter_add_(1, labels[top.indices], top.values.clamp(min=0) + 1e-9)
    knn_hit = (votes.argmax(1).numpy() == truth).astype(float)
    cents = torch.zeros(n_cls, gallery.shape[1], dtype=torch.float64).index_add_(0, labels, gallery)
    present = torch.bincount(labels, minlength=n_cls) > 0
    csim = q @ F.normalize(cents, dim=1).T
    csim[:, ~present] = -torch.inf
    cent_hit = (csim.argmax(1).numpy() == truth).astype(float)
    return {"figure": Figure(float(knn_hit.mean()),
                             bootstrap_se(lambda i: knn_hit[i].mean(), len(knn_hit), seed)
                             ).as_dict(),
            "knn_accuracy": float(knn_hit.mean()), "k": k,
            "centroid_accuracy": float(cent_hit.mean()), "probes": int(len(knn_hit))}
