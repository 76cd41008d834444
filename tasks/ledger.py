"""The request ledger: the one source of truth for erasure requests and their state.

One JSON file per request under ``data/requests/`` (DVC-tracked), written durably (temp file,
fsync, rename); ids are sequential (``req-0001``) so arrival order is the id order. Every
read-modify-write holds the ledger lock (``tasks.locks``), so two ``request add`` cannot queue
the same class twice and a cancel cannot race a status update.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, field_validator

from forgetting.config import Method
from forgetting.data import check_class_name
from forgetting.files import write_json_atomic

from .locks import hold

Status = Literal["pending", "running", "done", "failed_gate", "failed", "cancelled"]
OPEN = ("pending", "running")  # still to be processed, in order


class RequestSpec(BaseModel):
    """What a user submits (CLI flags or a request file); schema errors name the field."""

    model_config = ConfigDict(extra="forbid")
    classes: list[str] = Field(min_length=1)
    shots: int | None = Field(None, ge=1)
    method: Method | None = Field(None, description="none: the workspace's forget.method")
    reason: str = Field("", max_length=2000)
    requester: str = Field("unknown", max_length=200)

    @field_validator("classes")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for c in v:
            check_class_name(c)
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"duplicate class in request: {', '.join(dup)}")
        return v


class Purge(BaseModel):
    """The audit record of ``forget purge``: hashes only, never the images."""

    model_config = ConfigDict(extra="forbid")
    at: str
    dataset_version_before: str
    dataset_version_after: str
    image_sha256s: list[str]
    cache_objects_removed: int  # -1 while the purge is under way (resumable)
    last_acc_o: float | None  # Acc_o of the production model on these classes, just before
    last_acc_o_model_version: int | None


class Request(RequestSpec):
    model_config = ConfigDict(extra="forbid")
    id: str
    seq: int
    status: Status = "pending"
    created_at: str
    updated_at: str
    attempts: int = 0
    parent_version: int | None = None
    model_version: int | None = None
    dataset_version: str | None = None
    adapter_sha256: str | None = None
    mlflow_run_id: str | None = None
    gate: str | None = None
    error: str | None = None
    metrics: dict = Field(default_factory=dict)
    history: list[dict] = Field(default_factory=list)
    purge: Purge | None = None
    cancel_reason: str | None = None
    submission: str | None = None  # the Prefect flow run that submitted it (team stack)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Ledger:
    def __init__(self, directory: Path, lock: FileLock):
        self.dir, self.lock = Path(directory), lock

    def all(self) -> list[Request]:
        if not self.dir.is_dir():
            return []
        return sorted((Request.model_validate_json(p.read_text()) for p in
                       self.dir.glob("req-*.json")), key=lambda r: r.seq)

    def get(self, request_id: str) -> Request:
        p = self.dir / f"{request_id}.json"
        if "/" in request_id or ".." in request_id or not p.is_file():
            raise KeyError(f"no request {request_id!r}")
        return Request.model_validate_json(p.read_text())

    def pending(self) -> list[Request]:
        return [r for r in self.all() if r.status in OPEN]

    def add(self, spec: RequestSpec, check: Callable[[RequestSpec, list[Request]], None],
            submission: str | None = None) -> Request:
        """Queue ``spec`` after ``check(spec, requests)`` passes; both under the lock, so the
        queue the check saw is the queue the request joins."""
        with hold(self.lock, "the request ledger"):
            requests = self.all()
            check(spec, requests)
            seq = max((r.seq for r in requests), default=0) + 1
            now = _now()
            req = Request(**spec.model_dump(), id=f"req-{seq:04d}", seq=seq, created_at=now,
                          updated_at=now, history=[{"at": now, "status": "pending"}],
                          submission=submission)
            self._write(req)
            return req

    def update(self, request_id: str, expect: tuple[str, ...] | None = None, note: str | None = None,
               **changes) -> Request:
        """Read, change, write under the lock; ``expect``: the statuses the request may be in
        (else ``StaleRequest``: someone else changed it meanwhile)."""
        with hold(self.lock, "the request ledger"):
            req = self.get(request_id)
            if expect is not None and req.status not in expect:
                raise StaleRequest(f"{request_id} is {req.status}, not {' or '.join(expect)}")
            now = _now()
            data = req.model_dump() | changes | {"updated_at": now}
            if "status" in changes and changes["status"] != req.status:
                entry = {"at": now, "status": changes["status"]}
                data["history"] = [*req.history, entry | ({"note": note} if note else {})]
            new = Request.model_validate(data)
            self._write(new)
            return new

    def _write(self, req: Request) -> None:
        write_json_atomic(self.dir / f"{req.id}.json", req.model_dump())


class StaleRequest(RuntimeError):
    """A request changed state under us (cancelled while queued for a run, say)."""
