"""Where a deployment keeps its files, and the settings that keep the tools offline.

Layout under the root: ``params.yaml``; ``data/`` (DVC-tracked: the dataset, the base
checkpoint, one adapter and one report folder per request, the request ledger); ``.forgetting/`` (local state,
not versioned: MLflow's SQLite store and artifacts, Prefect's home, the local DVC remote, work
files of running requests, the locks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from forgetting.config import Config, deep_merge, load_config, parse_yaml
from forgetting.files import write_text_atomic


class NotAWorkspace(RuntimeError):
    """A command run outside a workspace (it must not create one as a side effect)."""



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
    def artifact_location(self) -> str | None:
        """Local runs keep their artifacts under ``.forgetting/``; a tracking server keeps
        them where it was told to (``--artifacts-destination``: S3 on the team stack)."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.state / "mlartifacts").as_uri()

    @property
    def name(self) -> str:
        """``workspace.name`` of params.yaml: its registered model, experiment, S3 prefix,
        git repository, deployment and run lock on a shared stack."""
        return self.config().workspace.name

    model_name = property(lambda s: f"{s.name}-vit")
    experiment = property(lambda s: s.name)

    def config(self) -> Config:
        return load_config(self.params if self.params.exists() else None)

    def params_with(self, changes: dict) -> tuple[Config, str]:
        """params.yaml with ``changes`` merged in: the validated config and the YAML text
        (other keys and their order kept), to write once the change has worked."""
        raw = (parse_yaml(self.params.read_text()) or {}) if self.params.exists() else {}
        merged = deep_merge(raw, changes)
        return load_config(None, merged), yaml.safe_dump(merged, sort_keys=False)

    def write_params(self, text: str) -> None:
        write_text_atomic(self.params, text)

    @property
    def exists(self) -> bool:
        """``forget init`` made it: params.yaml and a DVC repo."""
        return self.params.is_file() and (self.root / ".dvc").is_dir()

    def require(self) -> Workspace:
        if not self.exists:
            missing = [p for p, ok in (("params.yaml", self.params.is_file()),
                                       (".dvc/", (self.root / ".dvc").is_dir())) if not ok]
            raise NotAWorkspace(f"not a workspace: {self.root} has no {' or '.join(missing)}; "
                                f"run `forget init --root {self.root}` first (or pass --root)")
        return self

    def rel(self, p: Path) -> str:
        return str(Path(p).resolve().relative_to(self.root))
