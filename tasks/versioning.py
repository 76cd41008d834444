"""Versioning as a Prefect task: DVC add + push, git commit (``tasks.dvc`` does the work).

Prefect retries it (a DVC repo lock held by a concurrent ``dvc status`` is the usual cause).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from .dvc import track_paths


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def track(root: str, paths: list[str], message: str, extra: list[str] | None = None) -> None:
    """``dvc add`` + ``dvc push`` the paths; commit their pointers and ``extra`` files."""
    track_paths(root, paths, message, extra or [])
