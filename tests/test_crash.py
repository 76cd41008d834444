"""Exactly once under crashes and concurrency: real `forget run` processes, SIGKILLed at named
points (tasks/faults.py), against a real `prefect server` process, MLflow on SQLite and DVC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgetting.model import file_sha256

from .conftest import TINY
from .servers import free_port, server_process

PARAMS = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 6}, "forget": {"epochs": 2},
          "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0},
          "evidence": {"retrain_baseline": False}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment for CLI subprocesses: a real Prefect server, so each run skips the
    temporary server's start-up."""
    d = tmp_path_factory.mktemp("prefect-crash")
    port = free_port()
    e = {**os.environ, "PREFECT_HOME": str(d / "home"), "PREFECT_UI_ENABLED": "false"}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]
    api = f"http://127.0.0.1:{port}/api"
    with server_process(cmd, f"{api}/health", d / "server.log", e):
        yield {**e, "PREFECT_API_URL": api}


def forget(env: dict, root: Path, *args: str, kill_at: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    e = {**env, **({"FORGETTING_KILL_AT": kill_at} if kill_at else {})}
    res = subprocess.run([sys.executable, "-m", "forgetting_cli", *args, "--root", str(root)],
                         env=e, capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, f"forget {' '.join(args)}:\n{res.stdout[-2000:]}\n" \
                                    f"{res.stderr[-4000:]}"
    return res


@pytest.fixture(scope="module")
def ws(env, tmp_path_factory):
    from forgetting.config import Config, dump_config
    from tasks.workspace import Workspace

    root = tmp_path_factory.mktemp("crash-ws")
    (root / "params.yaml").write_text(dump_config(Config.model_validate(PARAMS)))
    for cmd in (["init"], ["ingest"], ["pretrain"]):
        forget(env, root, *cmd)
    w = Workspace.at(root)
    return w, file_sha256(w.dataset)


def _request(ws, rid: str) -> dict:
    return json.loads((ws.requests / f"{rid}.json").read_text())


def _queue(env, ws, cls: str) -> str:
    out = forget(env, ws.root, "request", "add", cls).stdout
    return out.split()[1].rstrip(":")


def assert_exactly_once(ws, rid: str, dataset_sha: str) -> None:
    from mlflow.entities import ViewType

    from tasks import registry

    req = _request(ws, rid)
    assert req["status"] == "done", req
    c = registry.client(ws)
    versions = c.search_model_versions(f"name = '{registry.MODEL_NAME}' and "
                                       f"tag.request_id = '{rid}'")
    assert len(versions) == 1 and int(versions[0].version) == req["model_version"]
    exp = registry.experiment_id(c, ws)
    runs = c.search_runs([exp], f"tags.request_id = '{rid}'", run_view_type=ViewType.ALL)
    assert [r.info.status for r in runs] == ["FINISHED"], [r.info for r in runs]
    assert runs[0].info.lifecycle_stage == "active"
    adapter = ws.adapter_dir(rid) / "adapter_model.safetensors"
    assert file_sha256(adapter) == req["adapter_sha256"] == versions[0].tags["adapter_sha256"]
    assert (ws.report_dir(rid) / "report.md").is_file()
    assert not [p for p in ws.data.rglob("*") if ".tmp" in p.name], "temp files left"
    assert not (ws.work / rid).exists(), "scratch folder left"
    assert file_sha256(ws.dataset) == dataset_sha, "dataset changed"
    from tasks.versioning import status_clean

    assert status_clean(ws.root), "dvc status not clean"
    git = subprocess.run(["git", "status", "--porcelain"], cwd=ws.root, capture_output=True,
                         text=True).stdout
    assert git.strip() == "", git


@pytest.mark.parametrize(("point", "cls"), [
    ("after-train", "digit_2"), ("after-mlflow-run", "digit_3"), ("after-register", "digit_4"),
    ("after-production-alias", "digit_5"), ("after-ledger-done", "digit_6")])
def test_killed_run_is_finished_by_the_next_exactly_once(env, ws, point, cls):
    w, dataset_sha = ws
    rid = _queue(env, w, cls)
    killed = forget(env, w.root, "run", kill_at=point, check=False)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert _request(w, rid)["status"] == ("done" if point == "after-ledger-done" else "running")
    forget(env, w.root, "run")
    assert_exactly_once(w, rid, dataset_sha)
    assert _request(w, rid)["attempts"] == (1 if point == "after-ledger-done" else 2)


def test_two_runs_at_once_process_each_request_once_in_order(env, ws):
    w, dataset_sha = ws
    first = _queue(env, w, "digit_7")
    a = subprocess.Popen([sys.executable, "-m", "forgetting_cli", "run", "--root", str(w.root)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while _request(w, first)["status"] == "pending":  # A holds the run lock and is working
        assert time.monotonic() < deadline and a.poll() is None, a.stdout.read()[-3000:]
        time.sleep(0.5)
    second = _queue(env, w, "digit_8")  # arrives while A runs
    b = subprocess.Popen([sys.executable, "-m", "forgetting_cli", "run", "--root", str(w.root)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_a, out_b = a.communicate(timeout=600)[0], b.communicate(timeout=600)[0]
    assert a.returncode == 0 and b.returncode == 0, (out_a[-3000:], out_b[-3000:])
    assert f"{second}:" not in out_a and f"{first}:" not in out_b  # each run took its own
    r1, r2 = _request(w, first), _request(w, second)
    assert r1["attempts"] == r2["attempts"] == 1
    assert r2["parent_version"] == r1["model_version"] < r2["model_version"]
    for rid in (first, second):
        assert_exactly_once(w, rid, dataset_sha)


def test_purge_removes_the_images_everywhere_and_keeps_the_rest(env, ws, tmp_path):
    from forgetting.data import image_hashes
    from tasks.versioning import object_paths, status_clean, tracked_md5

    w, _ = ws
    rid = "req-0001"  # digit_2, forgotten by the first crash test
    cls = _request(w, rid)["classes"]
    hashes = image_hashes(w.dataset, cls)
    old_md5 = tracked_md5(w.root, "data/dataset.parquet")
    assert hashes and all(p.is_file() for p in object_paths(w.root, old_md5))
    # killed after the audit record, then after the new dataset version: each rerun goes on
    killed = forget(env, w.root, "purge", rid, kill_at="purge-after-record", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _request(w, rid)["purge"]["cache_objects_removed"] == -1
    assert image_hashes(w.dataset, cls) == hashes  # nothing deleted yet
    killed = forget(env, w.root, "purge", rid, kill_at="purge-after-dataset", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert image_hashes(w.dataset, cls) == [] and _request(w, rid)["purge"]["image_sha256s"] \
        == hashes  # the record from the first attempt, not re-measured on the purged data
    assert all(p.is_file() for p in object_paths(w.root, old_md5)), "deleted before recorded"
    out = forget(env, w.root, "purge", rid).stdout
    assert f"purged {len(hashes)} images" in out, out
    assert image_hashes(w.dataset, cls) == []  # no split holds them
    rec = _request(w, rid)["purge"]
    assert rec["image_sha256s"] == hashes and rec["cache_objects_removed"] == 2
    assert rec["last_acc_o"] is not None and rec["last_acc_o"] <= 0.2
    assert not any(p.exists() for p in object_paths(w.root, old_md5)), "old dataset kept"
    new_md5 = tracked_md5(w.root, "data/dataset.parquet")
    assert all(p.is_file() for p in object_paths(w.root, new_md5))
    assert status_clean(w.root)
    cloud = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud", "--json"],
                           cwd=w.root, capture_output=True, text=True, env=env)
    assert cloud.returncode == 0 and cloud.stdout.strip() in ("", "{}"), cloud.stdout
    st = json.loads(forget(env, w.root, "status", "--json").stdout)
    assert {r["id"]: r for r in st["requests"]}[rid]["purge"]["image_sha256s"] == hashes
    # a later request's report marks the purged class's Acc_o as measured before the purge
    report = tmp_path / "r2"
    forget(env, w.root, "report", "req-0002", "--out", str(report))
    assert "last Acc_o measured before the purge" in (report / "report.md").read_text()
    again = forget(env, w.root, "purge", rid, check=False)
    assert again.returncode == 2 and "purged already" in again.stderr
    # the pipeline goes on with the new dataset version
    nxt = _queue(env, w, "digit_9")
    forget(env, w.root, "run")
    assert _request(w, nxt)["dataset_version"] == rec["dataset_version_after"]
    assert_exactly_once(w, nxt, file_sha256(w.dataset))


def test_prefect_api_unreachable_leaves_the_request_pending(env, ws):
    """Prefect's client retries with backoff, then `forget run` exits 2 naming the API; nothing
    was started, so the request stays pending and the next healthy run processes it once."""
    w, _ = ws
    rid = _queue(env, w, "digit_1")
    down = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    res = forget(down, w.root, "run", check=False)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Prefect API unreachable" in res.stderr and "stay" in res.stderr, res.stderr[-2000:]
    req = _request(w, rid)
    assert req["status"] == "pending" and req["attempts"] == 0 and req["model_version"] is None
    forget(env, w.root, "run")
    assert_exactly_once(w, rid, file_sha256(w.dataset))
    assert _request(w, rid)["attempts"] == 1
