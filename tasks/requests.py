"""Checking a new erasure request against the current dataset, model and queue."""

from __future__ import annotations

import numpy as np

from forgetting.data import ParquetImageDataset
from forgetting.train import RequestError, validate_request

from . import registry
from .ledger import Ledger, Request, RequestSpec
from .model_tasks import dataset_info, forgotten_in
from .workspace import Workspace


def ledger(ws: Workspace) -> Ledger:
    return Ledger(ws.requests, ws.state / "ledger.lock")


def queued_classes(ws: Workspace) -> list[str]:
    return [c for r in ledger(ws).pending() for c in r.classes]


def check_request(ws: Workspace, spec: RequestSpec) -> None:
    """Unknown, already forgotten or already queued classes, forgetting everything, too many
    shots: each a ``RequestError`` that names the problem."""
    if not ws.dataset.exists():
        raise RequestError("no dataset yet: run `forget ingest` first")
    info = dataset_info(ws)
    c = registry.client(ws)
    prod = registry.alias_version(c, "production")
    if prod is None:
        raise RequestError("no production model yet: run `forget pretrain` first")
    earlier = forgotten_in(ws, prod)
    queued = queued_classes(ws)
    for name in spec.classes:
        if name in queued:
            raise RequestError(f"class {name!r} is already in a pending request")
    validate_request(info.class_names, spec.classes, earlier + queued)
    if spec.shots is not None:
        train = ParquetImageDataset(ws.dataset, "train")
        counts = np.bincount(train.labels, minlength=info.num_classes)
        retained = [i for i, n in enumerate(info.class_names)
                    if n not in set(earlier) | set(queued)]
        short = [info.class_names[i] for i in retained if counts[i] < spec.shots]
        if short:
            raise RequestError(f"{spec.shots} shots asked but {', '.join(short[:5])} "
                               f"{'has' if len(short) == 1 else 'have'} fewer training images")


def add_request(ws: Workspace, spec: RequestSpec) -> Request:
    check_request(ws, spec)
    return ledger(ws).add(spec)
