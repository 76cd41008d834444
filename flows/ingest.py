"""Import a dataset to Parquet under ``data/``, record its source in params.yaml and version
both (DVC for the data, git for the params) in one commit."""

from __future__ import annotations

from prefect import flow

from forgetting.data import DataError
from tasks.data_tasks import import_dataset
from tasks.locks import run_lock
from tasks.requests import ledger
from tasks.versioning import track
from tasks.workspace import Workspace


@flow(name="ingest", log_prints=True)
def ingest_flow(root: str, source: str = "sklearn-digits", allow: dict | None = None) -> dict:
    """``allow``: the lossy changes this import may make (``resize``, ``convert_channels``,
    ``skip_nested``), recorded in params.yaml with the source."""
    ws = Workspace.at(root)
    _, params = ws.params_with({"data": {"source": source, **(allow or {})}})
    with run_lock(ws, "ingesting"):  # never replace the dataset under a running request
        running = [r.id for r in ledger(ws).all() if r.status == "running"]
        if running:
            raise DataError(f"{', '.join(running)} stopped part-way on the current dataset: "
                            "finish it with `forget run` (or `forget request cancel` it) before "
                            "a new dataset replaces it")
        info = import_dataset(root, source, {"data": {"source": source, **(allow or {})}})
        ws.write_params(params)
        track(root, ["data/dataset.parquet"], f"dataset {info['content_hash'][:12]} from {source}",
              extra=["params.yaml"])
    return info
