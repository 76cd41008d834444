"""Import a dataset to Parquet under ``data/`` and version it with DVC."""

from __future__ import annotations

from prefect import flow

from tasks.model_tasks import import_dataset
from tasks.versioning import track


@flow(name="ingest", log_prints=True)
def ingest_flow(root: str, source: str = "sklearn-digits") -> dict:
    info = import_dataset(root, source)
    track(root, ["data/dataset.parquet"], f"dataset {info['content_hash'][:12]}")
    return info
