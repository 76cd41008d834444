"""Purging a request's images from the dataset and from every stored copy DVC holds.

Why not ``dvc gc``: it keeps every object any git commit references, and the old dataset
versions stay referenced by the git history (which we do not rewrite), so gc cannot drop them
without also dropping unrelated history (``--workspace``). Instead the objects of exactly the old
dataset versions that hold a purged image are deleted, from the local cache and the local
remote, by their md5 (DVC 3's ``files/md5/xx/…`` layout); everything else stays.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from forgetting.data import DataError, image_hashes, read_info, write_without_classes
from forgetting.files import replace_durably
from forgetting.requests import RequestError

from . import registry
from .dvc import historic_md5s, object_paths, tracked_md5
from .ledger import Purge, Request
from .requests import ledger
from .workspace import Workspace

DATASET = "data/dataset.parquet"


@task(cache_policy=NO_CACHE)
def last_acc_o(root: str, version: int, classes: list[str]) -> float | None:
    """The production model's accuracy on these classes' test images, while they still exist.
    (torch is imported here: a resumed purge, which has this figure already, never loads it.)"""
    from forgetting.evaluate import accuracy, collect_outputs
    from forgetting.runtime import setup_runtime

    from .model_tasks import model_for_version, workspace_splits

    ws = Workspace.at(root)
    test = workspace_splits(ws)["test"]
    idx = [test.info.class_index(c) for c in classes]
    model, _ = model_for_version(ws, version)
    dev = setup_runtime(ws.config())
    out = collect_outputs(model.to(dev), test, dev)
    return accuracy(out["logits"].argmax(-1).numpy(), out["labels"].numpy(), idx)


@task(cache_policy=NO_CACHE)
def write_purged_dataset(root: str, classes: list[str]) -> str:
    """``data/dataset.parquet`` without any image of ``classes`` (kept if already so)."""
    ws = Workspace.at(root)
    if not image_hashes(ws.dataset, classes):
        return read_info(ws.dataset).content_hash
    staged = ws.work / f"purge-{os.getpid()}.parquet"
    ws.work.mkdir(parents=True, exist_ok=True)
    try:
        info = write_without_classes(ws.dataset, staged, classes)
        replace_durably(staged, ws.dataset)
    finally:
        staged.unlink(missing_ok=True)
    return info.content_hash


def _holds_any(path, hashes: set[str]) -> bool:
    col = pq.read_table(path, columns=["sha256"])["sha256"].to_numpy(zero_copy_only=False)
    return bool(np.isin(col.astype(str), list(hashes)).any())


@task(cache_policy=NO_CACHE)
def remove_old_versions(root: str, hashes: list[str]) -> int:
    """Delete the cached and pushed objects of old dataset versions holding a purged image.

    Objects already gone (an earlier purge, a retried run) are skipped; an old version whose
    object no longer exists anywhere cannot be inspected and holds nothing to delete.
    """
    ws = Workspace.at(root)
    current = tracked_md5(ws.root, DATASET)
    wanted = set(hashes)
    removed = 0
    for md5 in sorted(historic_md5s(ws.root, DATASET) - {current}):
        copies = [p for p in object_paths(ws.root, md5) if p.is_file()]
        if not copies:
            continue
        try:
            holds = _holds_any(copies[0], wanted)
        except Exception as e:  # an unreadable object: keep it, say so
            raise DataError(f"cannot inspect cached dataset object {md5}: {e}") from e
        if holds:
            for p in copies:
                p.unlink()
                removed += 1
            get_run_logger().info(f"purge: removed dataset object {md5} ({len(copies)} copies)")
    return removed


@task(cache_policy=NO_CACHE)
def check_and_record(root: str, request_id: str) -> Request:
    """Refuse what cannot be purged; on the first attempt, record the audit entry (hashes,
    last Acc_o) while the images still exist. A resumed purge keeps that first record."""
    ws = Workspace.at(root)
    led = ledger(ws)
    req = led.get(request_id)
    if req.purge is not None and req.purge.cache_objects_removed >= 0:
        raise RequestError(f"{request_id} was purged already on {req.purge.at}")
    if req.status != "done":
        raise RequestError(f"{request_id} is {req.status}; only a request whose forgetting "
                           "is done can be purged")
    running = [r.id for r in led.all() if r.status == "running"]
    if running:
        raise RequestError(f"{', '.join(running)} stopped part-way on the current dataset: "
                           "finish it with `forget run` (or cancel it) before purging")
    c = registry.client(ws)
    prod = registry.alias_version(c, "production")
    missing = set(req.classes) - set(registry.forgotten_in(c, prod))
    if missing:
        raise RequestError(f"the production model v{prod} has not forgotten "
                           f"{', '.join(sorted(missing))}; purge after it has")
    if req.purge is None:
        rec = Purge(at=datetime.now(UTC).isoformat(timespec="seconds"),
                    dataset_version_before=read_info(ws.dataset).content_hash,
                    dataset_version_after="", image_sha256s=image_hashes(ws.dataset, req.classes),
                    cache_objects_removed=-1, last_acc_o=last_acc_o.fn(root, prod, req.classes),
                    last_acc_o_model_version=prod)
        req = led.update(request_id, purge=rec.model_dump())
    return req


@task(cache_policy=NO_CACHE)
def finish_record(root: str, request_id: str, after: str, removed: int) -> Purge:
    led = ledger(Workspace.at(root))
    req = led.get(request_id)
    rec = req.purge.model_copy(update={"dataset_version_after": after,
                                       "cache_objects_removed": removed})
    led.update(request_id, purge=rec.model_dump())
    return rec
