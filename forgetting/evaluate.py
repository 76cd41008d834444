"""Acc_f, Acc_r, Acc_o, H-Mean and per-class accuracy (method.md), without any margin."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .runtime import autocast, loader_options, to_device


@torch.no_grad()
def collect_outputs(model: nn.Module, ds: Dataset, device: torch.device, batch_size: int = 256,
                    want_features: bool = False) -> dict[str, torch.Tensor]:
    """Logits (and the embedding feeding the head) for every item, on the CPU."""
    model.eval()
    logits, feats, labels = [], [], []
    # its own generator: a DataLoader without one draws a seed from the global RNG on every
    # pass, so an evaluation would change what a later seeded step (LoRA init) draws
    base = _classifier(model)
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False,
                           generator=torch.Generator(), **loader_options(device)):
        with autocast(device):
            f = base.embed(to_device(x, device))
            z = base.head(f)
        logits.append(z.float().cpu())
        if want_features:
            feats.append(f.float().cpu())
        labels.append(y)
    out = {"logits": torch.cat(logits) if logits else torch.zeros(0),
           "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)}
    if want_features:
        out["features"] = torch.cat(feats) if feats else torch.zeros(0)
    return out


def _classifier(model: nn.Module) -> nn.Module:
    """The Classifier inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def accuracy(pred: np.ndarray, labels: np.ndarray, classes: Iterable[int]) -> float | None:
    """Top-1 accuracy over the images of ``classes``; None when there are none."""
    mask = np.isin(labels, list(classes))
    return float((pred[mask] == labels[mask]).mean()) if mask.any() else None


def h_mean(acc_f_before: float, acc_f_after: float, acc_r: float, clamp: bool = True) -> float:
    """2 * drop * Acc_r / (drop + Acc_r), drop = Acc_f before - after. Ours clamps a negative
    drop (Acc_f rose) at 0, so H-Mean is 0 there; the authors' code lets it go negative
    (``clamp=False``). Only a request that made things worse reads differently."""
    drop = acc_f_before - acc_f_after
    if clamp:
        drop = max(drop, 0.0)
    return 0.0 if drop + acc_r == 0 else 2 * drop * acc_r / (drop + acc_r)


@dataclass
class Metrics:
    acc_f: float
    acc_r: float
    acc_o: float | None = None
    acc_missing: float | None = None
    # Acc_r without the missing classes: the authors' Acc_r, which reports them apart as
    # Acc_m; ours (acc_r) counts every retained class. None without missing classes
    acc_r_present: float | None = None
    h_mean: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict:
        d = asdict(self)
        return {f"{prefix}{k}": v for k, v in d.items()}


def evaluate(model: nn.Module, ds, forget: Iterable[int], earlier: Iterable[int] = (),
             missing: Iterable[int] = (), acc_f_before: float | None = None,
             device: torch.device | None = None, class_names: tuple[str, ...] | None = None,
             ) -> Metrics:
    """Metrics of one request on one split. Retained = every class not forgotten (now or before)."""
    device = device or next(model.parameters()).device
    out = collect_outputs(model, ds, device)
    pred, labels = out["logits"].argmax(-1).numpy(), out["labels"].numpy()
    return metrics_from_predictions(pred, labels, forget, earlier, missing, acc_f_before,
                                    class_names or tuple(str(i) for i in range(
                                        out["logits"].shape[-1])))


def metrics_from_predictions(pred: np.ndarray, labels: np.ndarray, forget: Iterable[int],
                             earlier: Iterable[int], missing: Iterable[int],
                             acc_f_before: float | None, class_names: tuple[str, ...]) -> Metrics:
    forget, earlier, missing = set(forget), set(earlier), set(missing)
    retained = set(range(len(class_names))) - forget - earlier
    acc_f = accuracy(pred, labels, forget)
    acc_r = accuracy(pred, labels, retained)
    if acc_f is None or acc_r is None:
        raise ValueError("evaluation split has no images of the forgotten or of the retained classes")
    per_class = {class_names[c]: a for c in sorted(set(labels.tolist()))
                 if (a := accuracy(pred, labels, [c])) is not None}
    return Metrics(
        acc_f=acc_f, acc_r=acc_r,
        acc_o=accuracy(pred, labels, earlier) if earlier else None,
        acc_missing=accuracy(pred, labels, missing) if missing else None,
        acc_r_present=accuracy(pred, labels, retained - missing) if missing else None,
        h_mean=h_mean(acc_f_before, acc_f, acc_r) if acc_f_before is not None else None,
        per_class=per_class,
    )


def class_accuracy(model: nn.Module, ds, device: torch.device, class_names: tuple[str, ...]
                   ) -> tuple[float, dict[str, float]]:
    """Top-1 accuracy over every image of ``ds``, and per class (a base model's check)."""
    out = collect_outputs(model, ds, device)
    pred, labels = out["logits"].argmax(-1).numpy(), out["labels"].numpy()
    per = {class_names[c]: a for c in sorted(set(labels.tolist()))
           if (a := accuracy(pred, labels, [c])) is not None}
    return float((pred == labels).mean()) if len(labels) else 0.0, per


def compare(before_model: nn.Module, after_model: nn.Module, ds, forget: Iterable[int],
            earlier: Iterable[int], device: torch.device, class_names: tuple[str, ...]) -> dict:
    """A request's effect on one split: the after-model's metrics, and the before-model's
    with a ``before_`` prefix (what the gates and the reports read)."""
    forget, earlier = list(forget), list(earlier)
    before = evaluate(before_model, ds, forget, earlier, device=device, class_names=class_names)
    after = evaluate(after_model, ds, forget, earlier, acc_f_before=before.acc_f, device=device,
                     class_names=class_names)
    return {**after.as_dict(), **before.as_dict("before_")}
