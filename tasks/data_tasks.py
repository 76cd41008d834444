"""Importing a dataset, as a Prefect task: no torch here, so `forget ingest` starts fast."""

from __future__ import annotations

import os

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from forgetting.data import (
    DataError,
    image_hashes_of,
    import_source,
    read_info,
    reference_class_names,
)
from forgetting.files import replace_durably

from .requests import ledger
from .workspace import Workspace


@task(cache_policy=NO_CACHE)
def refuse_while_a_request_is_half_done(root: str) -> None:
    """A request that stopped part-way (status running, under no run) started on the current
    dataset: it must be finished or cancelled before another dataset replaces it."""
    running = [r.id for r in ledger(Workspace.at(root)).all() if r.status == "running"]
    if running:
        raise DataError(f"{', '.join(running)} stopped part-way on the current dataset: "
                        "finish it with `forget run` (or `forget request cancel` it) before "
                        "a new dataset replaces it")


@task(cache_policy=NO_CACHE)
def import_dataset(root: str, source: str, changes: dict) -> dict:
    """Import to ``data/dataset.parquet``: the bundled digits, an ImageFolder, or a Parquet file,
    with params.yaml plus ``changes`` (what ``forget ingest`` is about to record there).
    Staged and checked (classes of an existing model) before it replaces anything."""
    ws = Workspace.at(root)
    cfg, _ = ws.params_with(changes)
    staged = ws.work / f"import-{os.getpid()}.parquet"
    ws.work.mkdir(parents=True, exist_ok=True)
    try:
        info, report = import_source(source, staged, cfg.data, cfg.model.in_chans)
        refuse_purged(ws, staged, source)
        if ws.base_checkpoint.exists():  # the model's classes are its dataset's (pretrain checks)
            model_classes = read_info(ws.dataset).class_names
            if list(model_classes) != list(info.class_names):
                extra = sorted(set(info.class_names) - set(model_classes))
                missing = sorted(set(model_classes) - set(info.class_names))
                raise DataError(
                    f"dataset {source} does not match the model's classes (new: "
                    f"{extra[:5] or 'none'}, missing: {missing[:5] or 'none'}"
                    f"{', same names in another order' if not extra and not missing else ''})"
                    "; a new class list needs a new workspace")
            before, after = reference_class_names(ws.dataset), reference_class_names(staged)
            if before != after:
                raise DataError(
                    f"data.reference_classes would change from {before or 'none'} to "
                    f"{after or 'none'} under a trained model: the never-seen reference must "
                    "be set aside before the base model is trained or imported (a new "
                    "workspace), or the model has seen it")
        ws.dataset.parent.mkdir(parents=True, exist_ok=True)
        replace_durably(staged, ws.dataset)
    finally:
        staged.unlink(missing_ok=True)
    for line in report.lines():
        get_run_logger().info(f"ingest: {line}")
    return {"content_hash": info.content_hash, "classes": list(info.class_names),
            "image_size": info.image_size, "channels": info.channels,
            "report": report.as_dict(), "summary": report.lines()}


def refuse_purged(ws: Workspace, staged, source: str) -> None:
    """A purge is for good: a source that still holds purged images (the same folder, say)
    must not bring them back with the next ingest."""
    purged = {h: r.id for r in ledger(ws).all() if r.purge for h in r.purge.image_sha256s}
    if not purged:
        return
    back = {purged[h] for h in image_hashes_of(staged) if h in purged}
    if back:
        n = sum(1 for h in image_hashes_of(staged) if h in purged)
        raise DataError(f"{n} images in {source} were purged by {', '.join(sorted(back))}: "
                        "remove them from the source first (the purge records hold their "
                        "sha256); nothing was imported")
