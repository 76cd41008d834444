"""MLflow tracking and model registry: runs, versions keyed by request id, aliases.

Every call names its run id explicitly: the active run is per thread, and Prefect may run a
task in another thread. Stages are deprecated, so ``production`` and ``candidate`` are aliases.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .errors import ServiceUnavailable
from .workspace import Workspace

T = TypeVar("T")
# given, to skip 10-18 s of requirement inference; this package itself is not on PyPI, so
# serve with --env-manager local where it is installed
PIP_REQUIREMENTS = ["torch", "timm", "safetensors", "peft"]
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # logged as MLflow "model from code"
CHECKPOINT, ADAPTER = "checkpoint", "adapter"  # artifact keys of a version's own part


def prime_requirements_map() -> None:
    """MLflow's map of every installed distribution's modules, computed now. MLflow builds it
    when a process logs its first model, to check the model's pip requirements against
    (``importlib.metadata.packages_distributions()``: 0.9 CPU-s here); a process that forks
    runs builds it once for all of them. MLflow's private helper: where a version lacks it,
    each run builds the map as before."""
    try:
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map
    except ImportError:
        return
    _init_modules_to_packages_map()


def with_backoff(fn: Callable[[], T], what: str, attempts: int = 4, first_delay: float = 1.0) -> T:
    """Retry a call to the tracking server with exponential backoff (1, 2, 4 s), then fail
    with one clear error instead of the client's traceback."""
    try:
        for attempt in Retrying(stop=stop_after_attempt(attempts),
                                wait=wait_exponential(multiplier=first_delay),
                                retry=retry_if_exception_type((MlflowException, OSError)),
                                reraise=True):
            with attempt:
                return fn()
    except (MlflowException, OSError) as e:
        raise ServiceUnavailable(
            f"MLflow unreachable or failing during {what} after {attempts} attempts "
            f"({str(e).splitlines()[0][:300]})") from e
    raise AssertionError("unreachable")


def client(ws: Workspace) -> Registry:
    ws.state.mkdir(parents=True, exist_ok=True)
    uri = ws.tracking_uri
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)  # for the fluent log_model call
    mlflow.set_registry_uri(uri)
    # MLflow 3 also exports these to the environment, where they would override the next
    # workspace's own store (measured: a second workspace in one process used the first's DB)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return Registry(ws.tracking_uri, ws.model_name, ws.experiment)


class Registry(MlflowClient):
    """MLflow's client with the workspace's registered model and experiment: every function
    here takes one, so two workspaces on one tracking server never touch each other's."""

    def __init__(self, uri: str, model_name: str, experiment: str):
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.model_name, self.experiment = model_name, experiment


def experiment_id(c: Registry, ws: Workspace) -> str:
    exp = c.get_experiment_by_name(c.experiment)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(c.experiment, artifact_location=ws.artifact_location)


def ensure_registered_model(c: Registry) -> None:
    try:
        c.get_registered_model(c.model_name)
    except MlflowException:
        c.create_registered_model(c.model_name, description="ViT with classes erased by GS-LoRA(++)")


def find_run(c: Registry, exp_id: str, request_id: str) -> str | None:
    runs = c.search_runs([exp_id], f"tags.request_id = '{request_id}' and "
                                   "attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


def signature(image_shape: tuple[int, ...]) -> ModelSignature:
    """One row per image out. No input schema: the model takes raw images (base64 PNG/JPEG
    strings, uint8 arrays of any size) as well as preprocessed float32 tensors of
    ``image_shape`` (``tasks.mlflow_model``), which one MLflow schema cannot say."""
    return ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("string", "class"), ColSpec("long", "class_index"),
                        ColSpec("float", "probability"),
                        ColSpec(Array("float"), "probabilities")]))


def log_request_run(ws: Workspace, request_id: str, params: dict, metrics: dict,
                    artifacts: list[Path], part: Path, part_sha256: str, lineage: list[dict],
                    image_shape: tuple[int, ...], metadata: dict | None = None,
                    on_started: Callable[[], None] | None = None) -> str:
    """One finished run per request (re-used if it already exists: exactly once).

    Its model holds only ``part`` (the base checkpoint, or the request's adapter folder) and
    the ``lineage`` below it (``tasks.mlflow_model``): a version costs its adapter.
    ``on_started``: called once the run exists and holds its params (a crash-test point)."""
    c = client(ws)
    exp = experiment_id(c, ws)
    existing = find_run(c, exp, request_id)
    if existing:
        return existing
    discard_unfinished_runs(c, exp, request_id)
    run = c.create_run(exp, tags={"request_id": request_id}, run_name=request_id)
    rid = run.info.run_id
    try:
        # in batches (a tracking server answers each call separately; MLflow takes up to
        # 100 params or 1000 metrics a call)
        ps = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(ps), 100):
            c.log_batch(rid, params=ps[i:i + 100])
        if on_started is not None:
            on_started()
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in metrics.items()
              if isinstance(v, int | float) and v is not None]
        for i in range(0, len(ms), 1000):
            c.log_batch(rid, metrics=ms[i:i + 1000])
        for a in artifacts:
            (c.log_artifacts if a.is_dir() else c.log_artifact)(rid, str(a), a.name if a.is_dir()
                                                                 else None)
        key = CHECKPOINT if part.is_file() else ADAPTER
        with mlflow.start_run(run_id=rid), warnings.catch_warnings():
            # the signature is given, so no example is needed (one would load the lineage)
            warnings.filterwarnings("ignore", ".*An input example was not provided")
            mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts={key: str(part)},
                model_config={"lineage": lineage, "sha256": part_sha256},
                signature=signature(tuple(image_shape)), metadata=metadata,
                pip_requirements=PIP_REQUIREMENTS)
        c.set_terminated(rid, "FINISHED")
    except BaseException:
        c.set_terminated(rid, "FAILED")
        raise
    return rid


def logged_model(c: Registry, run_id: str) -> tuple[str, str | None]:
    """(source uri, model id) of the run's logged model; a server needs both to register."""
    models = c.search_logged_models(experiment_ids=[c.get_run(run_id).info.experiment_id],
                                    filter_string=f"source_run_id = '{run_id}'")
    return (models[0].model_uri, models[0].model_id) if models else (f"runs:/{run_id}/model", None)


def discard_unfinished_runs(c: Registry, exp_id: str, request_id: str) -> None:
    """Runs of ``request_id`` a crash left RUNNING or FAILED, and their logged models: deleted,
    so a request ends with exactly one run."""
    for run in c.search_runs([exp_id], f"tags.request_id = '{request_id}' and "
                                       "attributes.status != 'FINISHED'"):
        for m in c.search_logged_models(experiment_ids=[exp_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'"):
            c.delete_logged_model(m.model_id)
        c.delete_run(run.info.run_id)


def register(ws: Workspace, request_id: str, run_id: str, part: Path, tags: dict) -> int:
    """The model version of ``request_id``; created once, found again after a crash.
    Its ``part_uri`` tag is where its own part is stored, for the lineage of its children."""
    c = client(ws)
    ensure_registered_model(c)
    found = version_for_request(c, request_id)
    if found is not None:
        return found
    source, model_id = logged_model(c, run_id)
    part_uri = (f"{c.get_logged_model(model_id).artifact_location}/artifacts/{part.name}"
                if model_id else f"{source}/artifacts/{part.name}")
    mv = c.create_model_version(c.model_name, source, run_id=run_id, model_id=model_id,
                                tags={"request_id": request_id, "part_uri": part_uri,
                                      **{k: str(v) for k, v in tags.items()}})
    return int(mv.version)


def lineage(c: Registry, parent: int) -> list[dict]:
    """What a child of ``parent`` loads below its own adapter, bottom first: the base and the
    adapters above it. Only stored parts, never a merged export: an export exists for the
    current production only, and goes when production moves."""
    parts: list[dict] = []
    for v, tags in chain(c, parent):
        if not tags.get("parent_version"):
            parts.append({"version": v, "kind": "full", "uri": tags["part_uri"],
                          "sha256": tags["checkpoint_sha256"]})
        else:
            parts.append({"version": v, "kind": "adapter", "uri": tags["part_uri"],
                          "sha256": tags["adapter_sha256"]})
    return parts[::-1]


def chain(c: Registry, version: int) -> list[tuple[int, dict[str, str]]]:
    """(version, tags) from ``version`` down to the base."""
    out: list[tuple[int, dict[str, str]]] = []
    v: int | None = version
    while v is not None:
        tags = version_tags(c, v)
        out.append((v, tags))
        v = int(tags["parent_version"]) if tags.get("parent_version") else None
    return out


def store_part(c: Registry, version: int, part: Path) -> str:
    """Log a version's own part (its checkpoint or adapter folder) to its run: for versions
    registered before versions stored their part in their MLflow model."""
    uri = log_to_version_run(c, version, part, "part")
    c.set_model_version_tag(c.model_name, str(version), "part_uri", uri)
    return uri


def log_to_version_run(c: Registry, version: int, path: Path, folder: str) -> str:
    """Log a file or folder under ``folder/`` of the version's run; its artifact URI."""
    mv = c.get_model_version(c.model_name, str(version))
    if path.is_dir():
        c.log_artifacts(mv.run_id, str(path), f"{folder}/{path.name}")
    else:
        c.log_artifact(mv.run_id, str(path), folder)
    return f"{c.get_run(mv.run_id).info.artifact_uri}/{folder}/{path.name}"


def store_merged(c: Registry, version: int, checkpoint: Path, sha256: str) -> str:
    """Log a full merged checkpoint of ``version`` to its run and tag the version with it (a
    standalone file for whoever deploys production without this package). Re-logging after
    a crash writes the same path again."""
    uri = log_to_version_run(c, version, checkpoint, "merged")
    c.set_model_version_tag(c.model_name, str(version), "merged_sha256", sha256)
    c.set_model_version_tag(c.model_name, str(version), "merged_uri", uri)
    return uri


def drop_merged(c: Registry, version: int) -> None:
    """Delete a merged export (production moved on; it can be made again from the chain).
    The tag goes first: a crash in between leaves files nobody points to, never a pointer to
    nothing."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mv = c.get_model_version(c.model_name, str(version))
    for tag in ("merged_uri", "merged_sha256"):
        if tag in mv.tags:
            c.delete_model_version_tag(c.model_name, str(version), tag)
    get_artifact_repository(c.get_run(mv.run_id).info.artifact_uri).delete_artifacts("merged")


def merged_versions(c: Registry) -> list[int]:
    """Versions that hold a merged export (one, normally: production's)."""
    return sorted(int(v.version) for v in c.search_model_versions(f"name = '{c.model_name}'")
                  if v.tags.get("merged_uri"))


def version_for_request(c: Registry, request_id: str) -> int | None:
    vs = c.search_model_versions(f"name = '{c.model_name}' and tag.request_id = '{request_id}'")
    return min(int(v.version) for v in vs) if vs else None


NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def alias_version(c: Registry, alias: str) -> int | None:
    """The version behind ``alias``; None if the alias or model does not exist. Any other
    failure (server down) is raised after retries, never mistaken for "no model"."""
    def get() -> int | None:
        try:
            return int(c.get_model_version_by_alias(c.model_name, alias).version)
        except MlflowException as e:
            if e.error_code in NOT_FOUND:
                return None
            raise

    return with_backoff(get, f"reading the {alias!r} alias")


def check_reachable(ws: Workspace) -> None:
    """Fail fast, before any request changes state, when the tracking server is down."""
    c = client(ws)
    with_backoff(lambda: c.search_experiments(max_results=1), f"contacting {ws.tracking_uri}")


def set_alias(c: Registry, alias: str, version: int, reason: str) -> None:
    """Move ``alias``; for ``production`` also append to its history tag. A read-modify-write:
    callers hold the run lock (``tasks.locks``), so no concurrent move is lost."""
    c.set_registered_model_alias(c.model_name, alias, str(version))
    c.set_model_version_tag(c.model_name, str(version), f"{alias}_reason", reason)
    if alias == "production":
        hist = production_history(c)
        if not hist or hist[-1] != version:
            hist.append(version)
        c.set_registered_model_tag(c.model_name, "production_history", json.dumps(hist))


def rollback(c: Registry, reason: str) -> tuple[int, int]:
    """Production back to the version before it: (from, to). Under the run lock."""
    hist = production_history(c)
    if len(hist) < 2:
        raise ValueError("no earlier production version to roll back to")
    prev, cur = hist[-2], hist[-1]
    c.set_registered_model_alias(c.model_name, "production", str(prev))
    c.set_model_version_tag(c.model_name, str(cur), "rolled_back_reason", reason)
    c.set_registered_model_tag(c.model_name, "production_history", json.dumps(hist[:-1]))
    return cur, prev


def version_tags(c: Registry, version: int) -> dict[str, str]:
    return dict(c.get_model_version(c.model_name, str(version)).tags)


def forgotten_in(c: Registry, version: int) -> list[str]:
    """Every class the model of ``version`` has forgotten (its own request's and earlier)."""
    return json.loads(version_tags(c, version).get("forgotten", "[]"))


def production_history(c: Registry) -> list[int]:
    return json.loads(c.get_registered_model(c.model_name).tags.get("production_history", "[]"))
