"""Pretrain a base model (or import the user's), version it with DVC, register it in MLflow as
``production``.

Does nothing when a production model is already registered, and then refuses a
``checkpoint`` (an import that is silently not used is the mistake to avoid); a crash after the
checkpoint was written resumes from that checkpoint instead of training again. Holds the run
lock: the base model is never replaced under a running request.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from forgetting.model import CheckpointError
from tasks import registry
from tasks.locks import run_lock
from tasks.model_tasks import import_base, pretrain_base, register_base
from tasks.versioning import track
from tasks.workspace import Workspace


@flow(name="pretrain", log_prints=True)
def pretrain_flow(root: str, checkpoint: str | None = None, arch: str | None = None,
                  class_names_file: str | None = None, margin: str = "cosface",
                  num_heads: int | None = None, global_pool: str | None = None,
                  model_args: dict | None = None, min_val_accuracy: float | None = None,
                  accept: bool = False) -> int:
    """``checkpoint``: a pre-trained model to use instead of pretraining one (the other
    arguments: see ``tasks.model_tasks.import_base``)."""
    ws = Workspace.at(root)
    log = get_run_logger()
    with run_lock(ws, "pretraining"):
        c = registry.client(ws)
        prod = registry.alias_version(c, "production")
        if prod is not None and checkpoint is not None:
            raise CheckpointError(
                f"this workspace already has a base model (production v{prod}); {checkpoint} "
                "was not imported: import it into a new workspace (forget init --root DIR)")
        if prod is not None:
            log.info(f"production model v{prod} exists; not pretraining")
            return prod
        res: dict = {}
        if registry.version_for_request(c, "base") is None:
            if checkpoint is not None:
                import_base(root, checkpoint, arch, class_names_file, margin, num_heads,
                            global_pool, model_args, min_val_accuracy, accept)
            elif not ws.base_checkpoint.exists():  # else: a crashed run wrote it already
                res = pretrain_base(root)
            track(root, ["data/models"], "base model", extra=["params.yaml"])
        version = register_base(root, res)
        registry.set_alias(c, "candidate", version, "base model")
        registry.set_alias(c, "production", version, "base model")
    log.info(f"registered base model as v{version} (production)")
    return version
