"""Pretrain a base model, version it with DVC, register it in MLflow as ``production``.

Does nothing when a production model is already registered; a crash after the checkpoint was
written resumes from that checkpoint instead of training again.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from forgetting.model import file_sha256, load_checkpoint
from tasks import registry
from tasks.model_tasks import dataset_info, import_base, pretrain_base
from tasks.versioning import track
from tasks.workspace import Workspace


@flow(name="pretrain", log_prints=True)
def pretrain_flow(root: str, checkpoint: str | None = None) -> int:
    """``checkpoint``: a pre-trained model to use instead of pretraining one."""
    ws = Workspace.at(root)
    log = get_run_logger()
    c = registry.client(ws)
    prod = registry.alias_version(c, "production")
    if prod is not None:
        log.info(f"production model v{prod} exists; not pretraining")
        return prod
    version = registry.version_for_request(c, "base")
    if version is None:
        res: dict = {}
        if checkpoint is not None:
            import_base(root, checkpoint)
        elif not ws.base_checkpoint.exists():  # else: a crashed run wrote it already
            res = pretrain_base(root)
        track(root, ["data/models"], "base model")
        info = dataset_info(ws)
        tags = {"checkpoint": ws.rel(ws.base_checkpoint),
                "checkpoint_sha256": file_sha256(ws.base_checkpoint),
                "dataset_version": info.content_hash, "forgotten": "[]"}
        model = load_checkpoint(ws.base_checkpoint, tags["checkpoint_sha256"])[0]
        run_id = registry.log_request_run(
            ws, "base", {"kind": "pretrain", **ws.config().pretrain.model_dump()},
            {k: v for k, v in res.items() if isinstance(v, float)}, [ws.base_checkpoint], model,
            (ws.config().model.in_chans, info.image_size, info.image_size))
        version = registry.register(ws, "base", run_id, tags)
    registry.set_alias(c, "candidate", version, "base model")
    registry.set_alias(c, "production", version, "base model")
    log.info(f"registered base model as v{version} (production)")
    return version
