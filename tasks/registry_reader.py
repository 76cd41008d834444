"""Read-only registry lookups (aliases, version tags) without importing MLflow.

``import mlflow`` alone takes 1.2 s here, more than half of a status command's budget, and
these lookups are all ``status``, ``request add`` and ``request cancel`` need. So:
- a tracking server (``http(s)://``): MLflow's documented REST API, with the same
  ``MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN`` credentials its client reads;
- the embedded store (``sqlite:///``): a read-only SQLite query, used only after checking
  that the tables have the columns read here (MLflow's schema); a store whose schema differs
  (another MLflow version) falls back to MLflow's client, as does any other store URI.
Writers always go through MLflow's client (``tasks.registry``). Tests check that both paths
give the same answers.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import ServiceUnavailable
from .workspace import Workspace

__all__ = ["ServiceUnavailable", "reader"]

_SCHEMA = {"registered_model_aliases": {"alias", "version", "name"},
           "model_version_tags": {"key", "value", "name", "version"},
           "model_versions": {"name", "version", "current_stage"}}
DELETED = "Deleted_Internal"  # MLflow's stage for a soft-deleted model version


class RegistryUnreadable(RuntimeError):
    """The fast path cannot read this store; use MLflow's client."""




class SqliteReader:
    def __init__(self, path: Path, model_name: str):
        self.path, self.model_name = path, model_name
        if not path.is_file():
            self.con = None
            return
        self.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        for table, cols in _SCHEMA.items():
            have = {r[1] for r in self.con.execute(f"PRAGMA table_info({table})")}
            if not cols <= have:
                raise RegistryUnreadable(f"{path}: table {table} lacks {sorted(cols - have)}")
            if "workspace" in have and self.con.execute(  # MLflow workspaces: not read here
                    f"SELECT COUNT(DISTINCT workspace) FROM {table}").fetchone()[0] > 1:
                raise RegistryUnreadable(f"{path}: several MLflow workspaces")

    def alias_version(self, alias: str) -> int | None:
        if self.con is None:
            return None
        row = self.con.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND "
                               "alias = ?", (self.model_name, alias)).fetchone()
        return int(row[0]) if row else None

    def version_tags(self, version: int) -> dict[str, str]:
        rows = self.con.execute("SELECT key, value FROM model_version_tags WHERE name = ? AND "
                                "version = ?", (self.model_name, version)).fetchall()
        return dict(rows)

    def version_for_request(self, request_id: str) -> int | None:
        if self.con is None:
            return None
        row = self.con.execute(
            "SELECT MIN(t.version) FROM model_version_tags t JOIN model_versions v ON "
            "v.name = t.name AND v.version = t.version WHERE t.name = ? AND t.key = "
            "'request_id' AND t.value = ? AND v.current_stage != ?",
            (self.model_name, request_id, DELETED)).fetchone()
        return int(row[0]) if row and row[0] is not None else None


class RestReader:
    """MLflow's REST API (``/api/2.0/mlflow/...``), as documented for the tracking server."""

    def __init__(self, uri: str, model_name: str):
        self.uri, self.model_name = uri.rstrip("/"), model_name

    def _get(self, endpoint: str, **query) -> dict | None:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        try:  # the same backoff as the writers' (tasks.registry.with_backoff)
            for attempt in Retrying(stop=stop_after_attempt(4), wait=wait_exponential(),
                                    retry=retry_if_exception_type(OSError), reraise=True):
                with attempt:
                    return self._get_once(endpoint, query)
        except OSError as e:
            raise ServiceUnavailable(f"MLflow unreachable at {self.uri} after 4 attempts "
                                     f"({e})") from e
        raise AssertionError("unreachable")

    def _get_once(self, endpoint: str, query: dict) -> dict | None:
        url = f"{self.uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        req = urllib.request.Request(url)
        if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            req.add_header("Authorization", f"Bearer {token}")
        elif user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
            pw = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
            req.add_header("Authorization",
                           "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        ctx = None  # TLS as MLflow's own client verifies it (its two settings)
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            ctx = ssl._create_unverified_context()
        elif ca := os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            ctx = ssl.create_default_context(cafile=ca)
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # an answer: not retried
            body = e.read().decode(errors="replace")
            try:
                err = json.loads(body)
            except ValueError:
                err = {}
            # what MLflow answers for a missing model, version or alias (as tasks.registry reads)
            if e.code == 404 or err.get("error_code") == "RESOURCE_DOES_NOT_EXIST" or (
                    err.get("error_code") == "INVALID_PARAMETER_VALUE"
                    and "not found" in err.get("message", "")):
                return None
            raise ServiceUnavailable(f"MLflow at {self.uri} answered HTTP {e.code} to "
                                     f"{endpoint}: {body[:300]}") from None

    def alias_version(self, alias: str) -> int | None:
        r = self._get("registered-models/alias", name=self.model_name, alias=alias)
        return int(r["model_version"]["version"]) if r else None

    def version_tags(self, version: int) -> dict[str, str]:
        r = self._get("model-versions/get", name=self.model_name, version=str(version)) or {}
        return {t["key"]: t["value"] for t in r.get("model_version", {}).get("tags", [])}

    def version_for_request(self, request_id: str) -> int | None:
        r = self._get("model-versions/search",
                      filter=f"name = '{self.model_name}' and tag.request_id = '{request_id}'") or {}
        versions = [int(v["version"]) for v in r.get("model_versions", [])]
        return min(versions) if versions else None


class ClientReader:
    """MLflow's own client (slow to import; any store)."""

    def __init__(self, ws: Workspace):
        from . import registry

        self.registry, self.c = registry, registry.client(ws)

    def alias_version(self, alias: str) -> int | None:
        return self.registry.alias_version(self.c, alias)

    def version_tags(self, version: int) -> dict[str, str]:
        return self.registry.version_tags(self.c, version)

    def version_for_request(self, request_id: str) -> int | None:
        return self.registry.version_for_request(self.c, request_id)


def reader(ws: Workspace):
    uri = ws.tracking_uri
    try:
        if uri.startswith("sqlite:///"):  # sqlite:////abs/path or sqlite:///relative/path
            return SqliteReader(Path(uri.removeprefix("sqlite:///")).resolve(), ws.model_name)
        if uri.startswith(("http://", "https://")):
            return RestReader(uri, ws.model_name)
    except (RegistryUnreadable, sqlite3.Error):
        pass
    return ClientReader(ws)


def forgotten_in(r, version: int) -> list[str]:
    return json.loads(r.version_tags(version).get("forgotten", "[]"))
