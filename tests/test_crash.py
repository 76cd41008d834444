"""Exactly once under crashes, locks and broken servers: real `forget` processes, SIGKILLed at
named points (tasks/faults.py), against a real Prefect server, MLflow on SQLite (or a real
`mlflow server` that a test stops mid-request) and DVC. A micro model: these tests are about
the pipeline's bookkeeping, not about forgetting quality."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from forgetting.model import file_sha256

from .conftest import MICRO
from .helpers import (
    assert_exactly_once,
    cli,
    forget,
    lock_held_elsewhere,
    queue,
    request_file,
    start_forget,
    wait_for_stderr,
    workspace,
)
from .servers import free_port, server_process, stop

pytestmark = pytest.mark.slow


def _run(w) -> list[dict]:
    """`forget run`'s flow, in this process."""
    from flows.process_requests import process_requests_flow

    return process_requests_flow(str(w.root))


@pytest.fixture(scope="module")
def ws(prefect_api, tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("crash-ws"), MICRO)


def test_a_request_killed_at_every_point_is_finished_exactly_once(cli_env, ws):
    """One request, SIGKILLed at each crash point in turn; every run resumes from what the
    kill before it left, and the last one finishes it: one run, one version, one adapter."""
    from tasks import registry
    from tasks.model_tasks import TRAINING_SUMMARY

    w, dataset_sha = ws
    rid = queue(cli_env, w, "digit_2")
    attempts = 0
    adapter_stat = None
    for point in ("after-start", "after-train", "after-adapter-tracked", "in-log-run",
                  "after-mlflow-run", "after-register", "after-production-alias",
                  "after-ledger-done"):
        killed = forget(cli_env, w.root, "run", kill_at=point, check=False)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-3000:])
        attempts += 1
        req = request_file(w, rid)
        assert req["status"] == ("done" if point == "after-ledger-done" else "running"), point
        assert req["attempts"] == attempts and req["parent_version"] == 1
        if point == "after-start":
            # the dataset a half-done request started on cannot be replaced under it
            res = cli("ingest", "--root", str(w.root))
            assert res.exit_code == 2 and f"{rid} stopped part-way" in res.output, res.output
            assert file_sha256(w.dataset) == dataset_sha
        if point == "after-adapter-tracked":
            # "already trained" is read from the DVC-tracked adapter, not from scratch files:
            # with the scratch folder gone, the adapter stays as stored (and as registered)
            adapter = w.adapter_dir(rid) / "adapter_model.safetensors"
            assert (w.adapter_dir(rid) / TRAINING_SUMMARY).is_file()
            adapter_stat = (adapter.stat().st_ino, adapter.stat().st_mtime_ns,
                            file_sha256(adapter))
            shutil.rmtree(w.work / rid)
        if point == "after-register":
            res = cli("request", "cancel", rid, "--reason", "x", "--root", str(w.root))
            assert res.exit_code == 2 and "already has model version v2" in res.output
    assert _run(w) == []  # only the DVC/git commit was left: recovery makes it
    assert_exactly_once(w, rid, dataset_sha)
    adapter = w.adapter_dir(rid) / "adapter_model.safetensors"
    assert (adapter.stat().st_ino, adapter.stat().st_mtime_ns, file_sha256(adapter)) \
        == adapter_stat, "the adapter was trained again"
    req = request_file(w, rid)
    assert req["attempts"] == attempts
    c = registry.client(w)
    assert registry.alias_version(c, "production") == req["model_version"] == 2


def test_two_runs_at_once_process_each_request_once_in_order(cli_env, ws):
    w, dataset_sha = ws
    first = queue(cli_env, w, "digit_7")
    a = start_forget(cli_env, w.root, "run")
    deadline = time.monotonic() + 300
    while request_file(w, first)["status"] == "pending":  # A holds the run lock and works
        assert time.monotonic() < deadline and a.poll() is None, a.communicate()
        time.sleep(0.5)
    second = queue(cli_env, w, "digit_8")  # arrives while A runs
    b = start_forget(cli_env, w.root, "run")
    out_a, out_b = a.communicate(timeout=600)[0], b.communicate(timeout=600)[0]
    assert a.returncode == 0 and b.returncode == 0, (out_a[-3000:], out_b[-3000:])
    assert f"{second}:" not in out_a and f"{first}:" not in out_b  # each run took its own
    r1, r2 = request_file(w, first), request_file(w, second)
    assert r1["attempts"] == r2["attempts"] == 1
    assert r2["parent_version"] == r1["model_version"] < r2["model_version"]
    for rid in (first, second):
        assert_exactly_once(w, rid, dataset_sha)


def test_commands_that_change_models_or_data_wait_for_the_run_lock(cli_env, ws):
    """promote, rollback and ingest used to run beside a request in progress: a rollback could
    be undone by the run's own production move, a dataset replaced under it."""
    from tasks import registry

    w, dataset_sha = ws
    c = registry.client(w)
    if registry.alias_version(c, "production") == 1:  # first of the module in its process:
        queue(cli_env, w, "digit_6")                  # a version to move production back from
        assert [r["status"] for r in _run(w)] == ["done"]
    prod = registry.alias_version(c, "production")
    with lock_held_elsewhere(w.lock):
        promote = start_forget(cli_env, w.root, "promote", "1", "--reason", "audit")
        ingest = start_forget(cli_env, w.root, "ingest")
        for p, what in ((promote, "promoting"), (ingest, "ingesting")):
            wait_for_stderr(p, f"waiting for the run in progress to finish before {what}")
        time.sleep(1)
        assert promote.poll() is None and ingest.poll() is None
        assert registry.alias_version(c, "production") == prod
    for p in (promote, ingest):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert registry.alias_version(c, "production") == 1
    assert registry.production_history(c)[-2:] == [prod, 1], registry.production_history(c)
    assert file_sha256(w.dataset) == dataset_sha  # the same source again: the same dataset
    forget(cli_env, w.root, "rollback", "--reason", "restore")
    assert registry.alias_version(c, "production") == prod


def test_two_adds_of_one_class_queue_it_once(cli_env, ws):
    """The queue check and the write happen under one lock: with both adds waiting on it,
    the first queues the class and the second is refused."""
    w, _ = ws
    with lock_held_elsewhere(w.state / "ledger.lock"):
        adds = [start_forget(cli_env, w.root, "-v", "request", "add", "digit_9")
                for _ in range(2)]
        for p in adds:
            wait_for_stderr(p, "waiting for the request ledger")
    outs = [p.communicate(timeout=120) for p in adds]
    codes = sorted(p.returncode for p in adds)
    assert codes == [0, 2], outs
    assert sum("already in a pending request" in err for _, err in outs) == 1, outs
    queued = [r for r in (json.loads(p.read_text()) for p in w.requests.glob("req-*.json"))
              if r["classes"] == ["digit_9"] and r["status"] == "pending"]
    assert len(queued) == 1
    forget(cli_env, w.root, "request", "cancel", queued[0]["id"], "--reason", "test done")


def test_recovery_leaves_a_request_file_being_written_alone(cli_env, ws):
    """Recovery removes temp files that killed runs left; in data/requests it waits for the
    ledger lock, under which `request add` writes, instead of deleting a file mid-write."""
    from tasks.recovery import recover

    w, _ = ws
    tmp = w.requests / ".req-0999.json.tmp-4242"
    with lock_held_elsewhere(w.state / "ledger.lock"):
        tmp.write_text("{half")
        t = threading.Thread(target=recover.fn, args=(str(w.root),))
        t.start()
        time.sleep(2)
        assert tmp.exists() and t.is_alive()
    t.join(timeout=120)
    assert not tmp.exists()


def test_purge_removes_the_images_everywhere_and_keeps_the_rest(cli_env, ws, tmp_path):
    from flows.purge import purge_flow
    from forgetting.data import image_hashes
    from tasks.dvc import object_paths, status_clean, tracked_md5

    w, _ = ws
    rid = queue(cli_env, w, "digit_3")
    _run(w)
    cls = request_file(w, rid)["classes"]
    hashes = image_hashes(w.dataset, cls)
    old_md5 = tracked_md5(w.root, "data/dataset.parquet")
    assert hashes and all(p.is_file() for p in object_paths(w.root, old_md5))
    # killed after the audit record, then after the new dataset version: each rerun goes on
    killed = forget(cli_env, w.root, "purge", rid, kill_at="purge-after-record", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert request_file(w, rid)["purge"]["cache_objects_removed"] == -1
    assert image_hashes(w.dataset, cls) == hashes  # nothing deleted yet
    killed = forget(cli_env, w.root, "purge", rid, kill_at="purge-after-dataset", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert image_hashes(w.dataset, cls) == [] and request_file(w, rid)["purge"][
        "image_sha256s"] == hashes  # the record from the first attempt, not re-measured
    assert all(p.is_file() for p in object_paths(w.root, old_md5)), "deleted before recorded"
    assert purge_flow(str(w.root), rid)["images"] == len(hashes)
    assert image_hashes(w.dataset, cls) == []  # no split holds them
    rec = request_file(w, rid)["purge"]
    assert rec["image_sha256s"] == hashes and rec["cache_objects_removed"] == 2
    assert rec["last_acc_o"] is not None
    assert not any(p.exists() for p in object_paths(w.root, old_md5)), "old dataset kept"
    new_md5 = tracked_md5(w.root, "data/dataset.parquet")
    assert all(p.is_file() for p in object_paths(w.root, new_md5))
    assert status_clean(w.root)
    cloud = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud", "--json"],
                           cwd=w.root, capture_output=True, text=True, env=cli_env)
    assert cloud.returncode == 0 and cloud.stdout.strip() in ("", "{}"), cloud.stdout
    again = forget(cli_env, w.root, "purge", rid, check=False)
    assert again.returncode == 2 and "purged already" in again.stderr
    # the same source again would bring the purged images back: refused, nothing changed
    back = cli("ingest", "--root", str(w.root))
    assert back.exit_code == 2 and f"were purged by {rid}" in back.output, back.output
    assert image_hashes(w.dataset, cls) == []
    # a later request's report marks the purged class's Acc_o as measured before the purge
    nxt = queue(cli_env, w, "digit_4")
    _run(w)
    assert request_file(w, nxt)["dataset_version"] == rec["dataset_version_after"]
    assert_exactly_once(w, nxt, file_sha256(w.dataset))
    report = tmp_path / "r"
    assert cli("report", nxt, "--out", str(report), "--root", str(w.root)).exit_code == 0
    assert "last Acc_o measured before the purge" in (report / "report.md").read_text()


def test_prefect_api_unreachable_leaves_the_request_pending(cli_env, ws):
    """Prefect's client fails to reach the API, then `forget run` exits 2 naming it; nothing
    was started, so the request stays pending and the next healthy run processes it once."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings


    w, _ = ws
    rid = queue(cli_env, w, "digit_1")
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api",
                             PREFECT_CLIENT_MAX_RETRIES: 1}):
        res = cli("run", "--root", w.root)
    assert res.exit_code == 2, res.output
    assert "Prefect API unreachable" in res.output and "stay" in res.output, res.output
    req = request_file(w, rid)
    assert req["status"] == "pending" and req["attempts"] == 0 and req["model_version"] is None
    _run(w)
    assert_exactly_once(w, rid, file_sha256(w.dataset))
    assert request_file(w, rid)["attempts"] == 1


def test_against_a_real_mlflow_server_that_fails_mid_request(prefect_api, tmp_path_factory,
                                                             monkeypatch):
    """A real `mlflow server` process: the pipeline registers through it and the fast status
    path reads it over REST. Then the server dies while a request is half done (after
    training): the run backs off, gives up naming MLflow and leaves the request pending with
    the reason; once the server is back, the next run finishes it exactly once. (The CLI's
    one-line error for such failures is checked in test_cli.py.)"""
    from tasks.ledger import RequestSpec
    from tasks.registry_reader import ClientReader, RestReader, ServiceUnavailable, reader
    from tasks.requests import add_request

    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
           f"sqlite:///{d / 'mlflow.db'}", "--default-artifact-root", (d / "art").as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    flag = d / "paused"
    with server_process(cmd, f"{url}/health", d / "server1.log") as server:
        w, dataset_sha = workspace(d / "ws", MICRO)  # the base registered through the server
        assert not (w.state / "mlflow.db").exists()  # nothing went to the embedded store
        fast, slow = reader(w), ClientReader(w)
        assert isinstance(fast, RestReader)
        assert [fast.alias_version(a) for a in ("production", "nope")] == [1, None]
        assert fast.version_tags(1) == slow.version_tags(1)
        assert fast.version_for_request("base") == slow.version_for_request("base") == 1
        assert fast.version_for_request("req-0001") is None

        rid = add_request(w, RequestSpec(classes=["digit_5"])).id
        monkeypatch.setenv("FORGETTING_PAUSE_AT", "after-train")
        monkeypatch.setenv("FORGETTING_PAUSE_FILE", str(flag))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                _run(w)
            except BaseException as e:  # noqa: BLE001 - what the run ended with, for the test
                failure.append(e)

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert time.monotonic() < deadline and t.is_alive(), failure
            time.sleep(0.2)
        stop(server, signal.SIGKILL)  # the server dies while the request is half done
        monkeypatch.delenv("FORGETTING_PAUSE_AT")
        flag.unlink()
        t.join(timeout=300)
    assert len(failure) == 1 and isinstance(failure[0], ServiceUnavailable), failure
    assert "MLflow unreachable" in str(failure[0])
    req = request_file(w, rid)
    assert req["status"] == "pending" and "MLflow unreachable" in req["error"]
    with server_process(cmd, f"{url}/health", d / "server2.log"):
        assert [(r["id"], r["status"], r["model_version"]) for r in _run(w)] == [
            (rid, "done", 2)]
        assert_exactly_once(w, rid, dataset_sha)
        assert fast.version_for_request(rid) == slow.version_for_request(rid) == 2
    assert request_file(w, rid)["attempts"] == 2
