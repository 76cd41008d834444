"""Queueing and cancelling erasure requests: checked against the dataset, the production
model and the queue. No Prefect and no torch here, so ``forget request add`` answers fast."""

from __future__ import annotations

import contextlib

from forgetting.data import label_counts, read_info, reference_class_names
from forgetting.requests import RequestError, validate_request

from . import registry_reader
from .ledger import OPEN, Ledger, Request, RequestSpec, StaleRequest
from .locks import Busy, ledger_lock, run_lock
from .workspace import Workspace


def ledger(ws: Workspace) -> Ledger:
    return Ledger(ws.requests, ledger_lock(ws))


def check_request(ws: Workspace, spec: RequestSpec, queue: list[Request]) -> None:
    """Unknown, already forgotten or already queued classes, forgetting everything, too many
    shots: each a ``RequestError`` that names the problem."""
    if not ws.dataset.exists():
        raise RequestError("no dataset yet: run `forget ingest` first")
    info = read_info(ws.dataset)
    if ws.config().evidence_reference == "never-seen" and not reference_class_names(ws.dataset):
        raise RequestError("evidence.reference is never-seen but the dataset has no reference "
                           "classes: set data.reference_classes and run `forget ingest` in a "
                           "new workspace (the base model must never have seen them)")
    reg = registry_reader.reader(ws)
    prod = reg.alias_version("production")
    if prod is None:
        raise RequestError("no production model yet: run `forget pretrain` first")
    earlier = registry_reader.forgotten_in(reg, prod)
    queued = {cls: r.id for r in queue if r.status in OPEN for cls in r.classes}
    for name in spec.classes:
        if name in queued:
            raise RequestError(f"class {name!r} is already in a pending request ({queued[name]})")
    validate_request(info.class_names, spec.classes, earlier + list(queued),
                     reference_class_names(ws.dataset))
    if spec.shots is not None:
        counts = label_counts(ws.dataset, "train")
        gone = set(earlier) | set(queued) | set(reference_class_names(ws.dataset))
        short = [n for i, n in enumerate(info.class_names)
                 if n not in gone and counts[i] < spec.shots]
        if short:
            raise RequestError(f"{spec.shots} shots asked but {', '.join(short[:5])} "
                               f"{'has' if len(short) == 1 else 'have'} fewer training images")


def add_request(ws: Workspace, spec: RequestSpec) -> Request:
    """Check and queue under the ledger lock: two concurrent adds cannot queue a class twice."""
    return ledger(ws).add(spec, lambda s, queue: check_request(ws, s, queue))


def cancel_request(ws: Workspace, request_id: str, reason: str, by: str) -> Request:
    """Take a pending request (or one a crashed run left ``running``) off the queue, with the
    reason in its audit record. A request whose model version exists is not cancelled: the
    next run finishes it, and ``forget rollback`` undoes it."""
    if not reason.strip():
        raise RequestError("give the reason for cancelling (--reason): it is kept in the "
                           "audit record")
    led = ledger(ws)
    req = led.get(request_id)
    if req.status not in OPEN:
        raise RequestError(f"{request_id} is {req.status}; only pending requests can be cancelled")
    # a pending request: the runner re-reads the status before it starts one, and the update
    # below fails if the runner got there first; a running one: only with the run lock free
    # (its run crashed), held until the cancel is written
    guard = run_lock(ws, f"cancelling {request_id}", timeout=0) if req.status == "running" \
        else contextlib.nullcontext()
    try:
        with guard:
            version = registry_reader.reader(ws).version_for_request(request_id)
            if version is not None:
                raise RequestError(
                    f"{request_id} already has model version v{version}; run `forget run` to "
                    "finish it (then `forget rollback` if it must not stay in production)")
            return led.update(request_id, expect=(req.status,), status="cancelled",
                              cancel_reason=reason, note=f"cancelled by {by}: {reason}")
    except Busy:
        raise RequestError(f"{request_id} is being processed by a run in progress; wait for it "
                           "to finish, or stop it, then cancel") from None
    except StaleRequest:
        raise RequestError(f"{request_id} was taken by a run that has just started; wait for "
                           "it to finish") from None
