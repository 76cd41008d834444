"""Linear probe: are the forgotten classes still linearly separable in the embedding?

Forgetting that only moves the head (or the last block's output to the head) leaves the
embedding as it was; a logistic regression trained on the frozen embeddings of the training
images (forgotten classes vs the rest, class-balanced) then finds them again on held-out
images. A model retrained without the classes still separates them to a degree (its features
are general): that degree, not zero, is the bar. Headline figure: the probe's mean probability
that a forgotten class's held-out image belongs to the forgotten classes. Its recall (at 1 %
false alarms on the others' held-out images) and AUC are reported too, but they saturate: on
the digits both were 1.00 for the original model and 0.96 / 0.99 for the retrained one, inside
their noise, while the mean probability was 0.999 against 0.88.
"""

from __future__ import annotations

import numpy as np

from .outputs import Outputs
from .stats import Figure, auc, bootstrap_se, tpr_at_fpr


def balanced_logistic(max_iter: int, **kw):
    """Standardised features into a class-balanced logistic regression: the attack model of
    the probe and of the membership inference. scikit-learn is imported here, not with the
    module: it was 1.1 of the 10.4 CPU-s that importing the pipeline (``flows.team``) took,
    in every process, attacks or none."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced",
                                                              max_iter=max_iter, **kw))


def linear_probe(out: Outputs, classes: list[int], seed: int = 0) -> dict:
    y_tr = np.isin(out.train_labels, classes)
    y_ho = np.isin(out.heldout_labels, classes)
    if not y_tr.any() or y_tr.all() or not y_ho.any() or y_ho.all():
        raise ValueError(f"the linear probe needs images of classes {classes} and of others "
                         "in both splits")
    probe = balanced_logistic(2000, C=1.0, random_state=seed)
    probe.fit(out.train_features.numpy(), y_tr)
    s = probe.decision_function(out.heldout_features.numpy())
    pos, neg = s[y_ho], s[~y_ho]
    conf = probe.predict_proba(out.heldout_features.numpy())[y_ho, 1]
    strata = y_ho.astype(int)

    def on(stat):
        return lambda idx: stat(s[idx][strata[idx] == 1], s[idx][strata[idx] == 0])

    recall = lambda a, b: tpr_at_fpr(a, b, 0.01)  # noqa: E731
    return {"figure": Figure(float(conf.mean()),
                             bootstrap_se(lambda i: conf[i].mean(), len(conf), seed)).as_dict(),
            "mean_probability": float(conf.mean()),
            "recall_at_1pct_false_alarms": recall(pos, neg), "auc": auc(pos, neg),
            "balanced_accuracy": float(((pos > 0).mean() + (neg <= 0).mean()) / 2),
            "heldout_images": int(y_ho.sum())}
