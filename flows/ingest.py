"""Import a dataset to Parquet under ``data/``, record its source in params.yaml and version
both (DVC for the data, git for the params) in one commit."""

from __future__ import annotations

from prefect import flow

from tasks.data_tasks import import_dataset, refuse_while_a_request_is_half_done
from tasks.locks import run_lock
from tasks.versioning import track
from tasks.workspace import Workspace


@flow(name="ingest", log_prints=True)
def ingest_flow(root: str, source: str = "sklearn-digits", allow: dict | None = None) -> dict:
    """``allow``: the lossy changes this import may make (``resize``, ``convert_channels``,
    ``skip_nested``), recorded in params.yaml with the source."""
    ws = Workspace.at(root)
    changes = {"data": {"source": source, **(allow or {})}}
    _, params = ws.params_with(changes)
    with run_lock(ws, "ingesting"):  # never replace the dataset under a running request
        refuse_while_a_request_is_half_done(root)
        info = import_dataset(root, source, changes)
        ws.write_params(params)
        track(root, ["data/dataset.parquet"], f"dataset {info['content_hash'][:12]} from {source}",
              extra=["params.yaml"])
    return info
