"""What the tests share: the CLI in this process or in its own (``cli``, ``forget``), a
workspace set up to production v1 (``workspace``), a tiny model (``tiny_model``), a poll loop
(``poll``), a workspace lock held from another process, the exactly-once check."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

from forgetting.model import file_sha256


def cli(*args: str, **kw):
    """A quick ``forget`` command in this process (Typer's runner: output captured)."""
    from typer.testing import CliRunner

    from forgetting_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def workspace(root: Path, params: dict):
    """``params.yaml``, init, ingest and a pretrained production v1, in this process (only
    what a test kills needs a process of its own); returns (workspace, dataset sha256)."""
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from tasks.workspace import Workspace

    from .conftest import write_params

    write_params(root, params)
    res = cli("init", "--root", root)
    assert res.exit_code == 0, res.output
    ingest_flow(str(root))
    assert pretrain_flow(str(root)) == 1
    w = Workspace.at(root)
    return w, file_sha256(w.dataset)


def tiny_model(head: str = "linear", embed_dim: int = 16, num_classes: int = 3):
    """A 2-block ViT on 8 px grey images, seeded: for tests on fixed tensors."""
    import torch

    from forgetting.config import ModelConfig
    from forgetting.model import create_model

    torch.manual_seed(0)
    return create_model(ModelConfig(embed_dim=embed_dim, depth=2, num_heads=2, image_size=8,
                                    patch_size=4, head=head, head_margin=0.3, head_scale=8.0),
                        num_classes)


def poll(cond, what: str, timeout: float, every: float = 1.0, procs=()) -> None:
    """Until ``cond()`` holds; fails naming ``what`` (and the logs of ``procs``, pairs of a
    process and its log file, when one of them exits first or time runs out)."""
    import time

    import pytest

    deadline = time.monotonic() + timeout
    while not cond():
        for p, log in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: a process exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(log.read_text()[-3000:] for _, log in procs)
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{logs}")
        time.sleep(every)


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
    args = ["request", "add", *classes, *(["--shots", str(shots)] if shots else [])]
    res = cli(*args, "--root", ws.root)
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
