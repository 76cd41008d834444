"""The one place for the settings that keep Prefect, MLflow, DVC and the hub offline and
quiet, and the workspace's Prefect home. The CLI, the tests and printed shell commands all use
these; set before Prefect or MLflow is imported (Prefect reads its settings once, at import).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

# Values a user has set win (setdefault).
OFFLINE = {
    "DO_NOT_TRACK": "true",  # MLflow honours it only when exactly "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # a cold temporary server takes ~20 s here; Prefect's default timeout is 20 s
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_OFFLINE": "1",
    # the library's progress lines (logger "forgetting") also reach the flow run's logs, and
    # outside a flow run (a quick command) they are only printed
    "PREFECT_LOGGING_EXTRA_LOGGERS": "forgetting",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # MLflow's per-download progress bars (every artifact of a lineage) on a console
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Dask's connection lines (evidence.parallel's local cluster)
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
    # MLflow 3's server runs GenAI jobs (scorers, trace roll-ups) by default: a job runner and
    # five Huey consumer processes per server, unused here (measured: 213 s of CPU in one
    # `make test`, a tenth of the suite)
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def workspace_env(state: Path) -> dict[str, str]:
    """Per-workspace locations, under its ``.forgetting/`` folder."""
    return {"PREFECT_HOME": str(state / "prefect"), "DVC_SITE_CACHE_DIR": str(state / "dvc-site")}


def apply(state: Path | None = None) -> None:
    """Set the defaults (and, given a workspace's state folder, its Prefect home)."""
    for k, v in {**OFFLINE, **(workspace_env(state) if state else {})}.items():
        os.environ.setdefault(k, v)
    if state is not None and os.environ["PREFECT_HOME"] == str(state / "prefect"):
        (state / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect warns if missing


def tool(name: str) -> str:
    """The absolute path of a console script of this environment (``mlflow``, ``prefect``,
    ``dvc``), so a printed command works without an activated virtualenv."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def shell_command(args: list[str], state: Path | None = None, cwd: Path | None = None,
                  extra_env: dict[str, str] | None = None) -> str:
    """A copy-pasteable command line: ``env`` with the offline settings, then the tool."""
    env = {**OFFLINE, **(workspace_env(state) if state else {}), **(extra_env or {})}
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    env.pop("PREFECT_LOGGING_EXTRA_LOGGERS")
    env.pop("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW")
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    env.pop("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED")
    line = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), tool(args[0]), *args[1:]])
    return f"cd {shlex.quote(str(cwd))} && {line}" if cwd else line
