"""Helpers for tests that drive real ``forget`` processes: run the CLI, hold a workspace lock
from another process, wait until a process is blocked on a lock, check exactly-once."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

from forgetting.model import file_sha256


def forget(env: dict, root: Path, *args: str, kill_at: str | None = None, check: bool = True,
           timeout: float = 600, fresh: bool = False, **extra_env) -> subprocess.CompletedProcess:
    """``forget ARGS --root ROOT`` in its own process: forked from the tests' fork server
    (the pipeline already imported), or a fresh interpreter with ``fresh=True``."""
    e = {**env, **({"FORGETTING_KILL_AT": kill_at} if kill_at else {}), **extra_env}
    argv = [*args, "--root", str(root)]
    if fresh:
        res = subprocess.run([sys.executable, "-m", "forgetting_cli", *argv], env=e,
                             capture_output=True, text=True, timeout=timeout)
    else:
        p = start_forget(e, root, *args)
        out, err = p.communicate(timeout)
        res = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check:
        assert res.returncode == 0, (f"forget {' '.join(args)}:\n{res.stdout[-2000:]}\n"
                                     f"{res.stderr[-4000:]}")
    return res


def start_forget(env: dict, root: Path, *args: str, **extra_env):
    """A ``forget`` command running in the background (a fork-server process)."""
    from .forkserver import Forked

    return Forked([*args, "--root", str(root)], {**env, **extra_env})


@contextlib.contextmanager
def lock_held_elsewhere(path: Path):
    """Another process holds the OS lock at ``path`` until the block ends."""
    code = ("import sys; from filelock import FileLock; "
            "lock = FileLock(sys.argv[1], preserve_lock_file=True); lock.acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def wait_for_stderr(proc, text: str, timeout: float = 120) -> str:
    """Until ``proc`` writes a stderr line holding ``text`` (it says it waits on a lock)."""
    return proc.wait_for_stderr(text, timeout)


def request_file(ws, rid: str) -> dict:
    return json.loads((ws.requests / f"{rid}.json").read_text())


def queue(env: dict, ws, *classes: str, shots: int | None = None) -> str:
    """`forget request add` (in this process: a quick command)."""
    from typer.testing import CliRunner

    from forgetting_cli.main import app

    args = ["request", "add", *classes, *(["--shots", str(shots)] if shots else [])]
    res = CliRunner().invoke(app, [*args, "--root", str(ws.root)])
    assert res.exit_code == 0, res.output
    return res.output.split()[1].rstrip(":")


def assert_exactly_once(ws, rid: str, dataset_sha: str) -> None:
    """One finished MLflow run and one model version for the request, the adapter the version
    names, its report, nothing temporary left, the dataset untouched, DVC and git clean."""
    from mlflow.entities import ViewType

    from tasks import registry
    from tasks.dvc import status_clean

    req = request_file(ws, rid)
    assert req["status"] == "done", req
    c = registry.client(ws)
    versions = c.search_model_versions(f"name = '{c.model_name}' and "
                                       f"tag.request_id = '{rid}'")
    assert len(versions) == 1 and int(versions[0].version) == req["model_version"]
    exp = registry.experiment_id(c, ws)
    runs = c.search_runs([exp], f"tags.request_id = '{rid}'", run_view_type=ViewType.ALL)
    active = [r.info for r in runs if r.info.lifecycle_stage == "active"]
    assert [r.status for r in active] == ["FINISHED"], active
    # a run a crash left unfinished is deleted (soft, as MLflow deletes: kept for the audit
    # trail until `mlflow gc`), never a finished one
    assert all(r.info.status != "FINISHED" for r in runs if r.info.lifecycle_stage != "active")
    adapter = ws.adapter_dir(rid) / "adapter_model.safetensors"
    assert file_sha256(adapter) == req["adapter_sha256"] == versions[0].tags["adapter_sha256"]
    assert (ws.report_dir(rid) / "report.md").is_file()
    assert not [p for p in ws.data.rglob("*") if ".tmp" in p.name], "temp files left"
    assert not (ws.work / rid).exists(), "scratch folder left"
    assert file_sha256(ws.dataset) == dataset_sha, "dataset changed"
    assert status_clean(ws.root), "dvc status not clean"
    git = subprocess.run(["git", "status", "--porcelain"], cwd=ws.root, capture_output=True,
                         text=True).stdout
    assert git.strip() == "", git
