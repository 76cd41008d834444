"""A burst on the team stack: N submissions from 3 client folders at once while 2 workers run.

The bundled digits have 10 classes and forgetting every class is refused, so one workspace
takes at most 9 one-class requests: the three client folders are three workspaces on one
stack, each submitting its share in its own order (``forget request add`` as fast as it
returns), all three at once. Two ``forget worker`` processes serve the pool; one workspace's
requests queue behind its run lock, different workspaces' run side by side.

Checked (exit 1 otherwise): every submission queued and processed exactly once (one ledger
entry, one finished MLflow run, one model version each), each workspace's requests in its
submission order, all ``done``. Reported: wall time from the first submission to the last
request done, requests per minute, and the submitting side's latency.

    python benchmarks/burst.py --requests 20 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CLIENTS = 3
# a micro model on the digits, one thread per process (two workers share 2 cores here: the
# default model took 3 minutes a request that way), evidence off and gates open: what is
# measured is the stack's handling of a burst, not training
PARAMS = {"model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 16,
                    "patch_size": 4},
          "pretrain": {"epochs": 4, "batch_size": 64, "lr": 3e-3},
          "forget": {"epochs": 2, "min_steps_per_epoch": 4}, "threads": 1,
          "evidence": {"membership_inference": False, "retrain_baseline": False, "attacks": []},
          "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0, "max_class_drop": 1.0,
                    "evidence": []}}


def forget(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "forgetting_cli", *args], env=env,
                         capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"forget {' '.join(args)}: {res.stderr[-1500:]}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    if a.requests > 9 * CLIENTS:
        ap.error(f"at most {9 * CLIENTS} requests: 9 per workspace")
    from forgetting.config import Config, dump_config
    from forgetting_stack import Stack, free_port_base, read_env_file
    from tasks.environment import OFFLINE

    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING", "FORGET_"))}
    top = Path(tempfile.mkdtemp(prefix="forgetting-burst-", dir="/tmp"))
    top.chmod(0o711)  # PostgreSQL runs as 'nobody' under root: it must reach its folder
    base.update({**OFFLINE, "TQDM_DISABLE": "1", "PREFECT_HOME": str(top / "prefect"),
                 "DVC_SITE_CACHE_DIR": str(top / "dvc-site"), "TMPDIR": str(top)})
    st = Stack(top / "stack")
    workers: list[subprocess.Popen] = []
    try:
        st.up("127.0.0.1", free_port_base())
        env = {**base, **read_env_file(st.client_file)}
        clients = [top / f"client{c}" for c in range(CLIENTS)]
        for c, root in enumerate(clients):
            root.mkdir()
            (root / "params.yaml").write_text(dump_config(Config.model_validate(
                {**PARAMS, "workspace": {"name": f"team{c}"}})))
            for args in (["init"], ["stack", "attach"], ["ingest"], ["pretrain"],
                         ["stack", "deploy"]):
                forget(env, *args, "--root", str(root))
        for w in range(a.workers):
            d = top / f"worker{w}"
            d.mkdir()
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "forgetting_cli", "worker", "--pool", "forgetting",
                 "--dir", str(d), "--name", f"worker{w}"],
                env={**env, "PREFECT_HOME": str(d / "prefect"),
                     "DVC_SITE_CACHE_DIR": str(d / "dvc-site"),
                     "PREFECT_WORKER_QUERY_SECONDS": "1"},
                stdout=open(top / f"worker{w}.log", "w"), stderr=subprocess.STDOUT, cwd=d,
                start_new_session=True))
        share = [[f"digit_{i}" for i in range(len(range(c, a.requests, CLIENTS)))]
                 for c in range(CLIENTS)]
        submitted: list[list[dict]] = [[] for _ in clients]

        def client(c: int) -> None:
            for cls in share[c]:
                t0 = time.perf_counter()
                res = forget(env, "request", "add", cls, "--root", str(clients[c]))
                submitted[c].append({"class": cls, "seconds": time.perf_counter() - t0,
                                     "at": time.perf_counter(), "out": res.stdout.strip()})

        t_start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_submitted = time.perf_counter()

        def statuses(c: int) -> list[dict]:
            return json.loads(forget(env, "status", "--json", "--root",
                                     str(clients[c])).stdout)["requests"]

        deadline = time.monotonic() + 3600
        while True:
            done = [statuses(c) for c in range(CLIENTS)]
            if all(len(d) == len(share[c]) and all(r["status"] in ("done", "failed")
                                                   for r in d) for c, d in enumerate(done)):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in workers):
                raise RuntimeError(f"the burst did not finish: {done}")
            time.sleep(5)
        t_done = time.perf_counter()
        problems = check(env, clients, share, done)
        n = sum(len(s) for s in share)
        latency = sorted(x["seconds"] for s in submitted for x in s)
        result = {"requests": n, "clients": CLIENTS, "workers": a.workers,
                  "cpus": os.cpu_count(),
                  "submit_seconds": round(t_submitted - t_start, 1),
                  "submission_latency_median_s": round(latency[len(latency) // 2], 2),
                  "submission_latency_max_s": round(latency[-1], 2),
                  "wall_seconds": round(t_done - t_start, 1),
                  "requests_per_minute": round(60 * n / (t_done - t_start), 2),
                  "statuses": sorted({r["status"] for d in done for r in d}),
                  "each_once_in_order": not problems, "problems": problems}
    finally:
        for p in workers:  # each worker with its flow runs (its own process group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        st.down()
        shutil.rmtree(top, ignore_errors=True)  # the temp folder this script made
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0 if not problems else 1


def check(env: dict, clients: list[Path], share: list[list[str]], done: list[list[dict]]
          ) -> list[str]:
    """Each submission once, in its workspace's submission order, with one finished MLflow
    run and one model version."""
    from mlflow import MlflowClient

    from forgetting_stack import mlflow_login

    problems = []
    ml = env["MLFLOW_TRACKING_URI"]
    c = MlflowClient(ml, ml)
    for i, (root, want, got) in enumerate(zip(clients, share, done, strict=True)):
        files = [json.loads((root / "data" / "requests" / f"{r['id']}.json").read_text())
                 for r in got]
        classes = [f["classes"] for f in files]
        if classes != [[cls] for cls in want]:
            problems.append(f"team{i}: queued {classes}, submitted {want}")
        if len({f["submission"] for f in files}) != len(got) or not all(
                f["submission"] for f in files):
            problems.append(f"team{i}: a submission queued twice, or not from a submission")
        with mlflow_login(env):
            exp = c.get_experiment_by_name(f"team{i}").experiment_id
            for r in got:
                runs = c.search_runs([exp], f"tags.request_id = '{r['id']}'")
                vs = c.search_model_versions(f"name = 'team{i}-vit' and "
                                             f"tag.request_id = '{r['id']}'")
                if len(runs) != 1 or len(vs) != 1:
                    problems.append(f"team{i} {r['id']}: {len(runs)} runs, {len(vs)} versions")
                if r["status"] != "done":
                    problems.append(f"team{i} {r['id']}: {r['status']}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
