"""Where a deployment keeps its files, and the settings that keep the tools offline.

Layout under the root: ``params.yaml``; ``data/`` (DVC-tracked: the dataset, the base
checkpoint, one adapter and one report folder per request, the request ledger); ``.forgetting/`` (local state,
not versioned: MLflow's SQLite store and artifacts, Prefect's home, the local DVC remote, work
files of running requests, the run lock).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from forgetting.config import Config, load_config

MODEL_NAME = "forgetting-vit"
EXPERIMENT = "forgetting"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        return cls(Path(root).resolve())

    params = property(lambda s: s.root / "params.yaml")
    data = property(lambda s: s.root / "data")
    dataset = property(lambda s: s.data / "dataset.parquet")
    base_checkpoint = property(lambda s: s.data / "models" / "base.safetensors")
    adapters = property(lambda s: s.data / "adapters")
    reports = property(lambda s: s.data / "reports")
    requests = property(lambda s: s.data / "requests")
    state = property(lambda s: s.root / ".forgetting")
    work = property(lambda s: s.state / "work")
    dvc_remote = property(lambda s: s.state / "dvc-remote")
    lock = property(lambda s: s.state / "run.lock")

    def adapter_dir(self, request_id: str) -> Path:
        return self.adapters / request_id

    def report_dir(self, request_id: str) -> Path:
        return self.reports / request_id

    def work_dir(self, request_id: str) -> Path:
        d = self.work / request_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.state / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return (self.state / "mlartifacts").as_uri()

    def config(self) -> Config:
        return load_config(self.params if self.params.exists() else None)

    def rel(self, p: Path) -> str:
        return str(Path(p).resolve().relative_to(self.root))


def offline_environment(ws: Workspace) -> None:
    """Telemetry off, Prefect home inside the workspace; call before importing Prefect/MLflow.

    Values the user already set (PREFECT_API_URL, MLFLOW_TRACKING_URI, PREFECT_HOME) win.
    """
    defaults = {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_HOME": str(ws.state / "prefect"),
        "DVC_SITE_CACHE_DIR": str(ws.state / "dvc-site"),
        "HF_HUB_OFFLINE": "1",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if os.environ["PREFECT_HOME"] == defaults["PREFECT_HOME"]:  # Prefect warns if it is missing
        Path(defaults["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
