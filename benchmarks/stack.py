"""The team stack's cost per request, and what parallel evidence buys, in one run (issue 10).

1. Per-request pipeline time: the same requests, same model and data, through the request flow
   in a workspace on the embedded defaults (SQLite MLflow, local DVC remote, file lock) and in
   one attached to a ``forget stack`` started here (Prefect and MLflow on PostgreSQL, DVC data
   and MLflow artifacts on S3, every commit pushed to the git server, the PostgreSQL run
   lock, requests submitted as Prefect flow runs). The library's work is identical, so the
   difference per request is the stack's overhead.
2. One request with its retrain reference (and membership inference) trained after the
   forgetting run (serial) and beside it (``evidence.parallel``, Prefect's thread task runner).

Each measurement runs in a fresh process of this script (Prefect reads its API URL once, at
import). ``python benchmarks/readme_figures.py --only stack`` runs it and records
``benchmarks/results/stack.json`` for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CLASSES = ["digit_3", "digit_5", "digit_8", "digit_2", "digit_6"]
# the default digits model, pretrained briefly (pretraining is not what is measured)
PARAMS = {"pretrain": {"epochs": 15}}


def _params(evidence: dict) -> dict:
    return {**PARAMS, "evidence": evidence,
            "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0, "max_class_drop": 1.0,
                      "evidence": []}}


def child_requests(n: int, on_stack: bool) -> dict:
    """In this process: a workspace, pretrain, ``n`` one-class requests through the flow."""
    from forgetting.config import Config, dump_config
    from tasks import environment
    from tasks.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="forgetting-stackbench-"))
    ws = Workspace.at(root)
    environment.apply(ws.state)
    (root / "params.yaml").write_text(dump_config(Config.model_validate({
        **_params({"membership_inference": False, "retrain_baseline": False}),
        "workspace": {"name": "bench"}})))
    from forgetting_cli.pipeline import init

    init(root)
    if on_stack:  # as `forget stack attach` (its first push makes the git repository)
        from tasks import shared

        e = os.environ
        shared.attach(ws, f"{e['FORGET_GIT_URL']}/bench.git", f"s3://{e['FORGET_S3_BUCKET']}/dvc/bench",
                    e["MLFLOW_S3_ENDPOINT_URL"], e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"])
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from flows.process_requests import process_requests_flow
    from tasks.ledger import RequestSpec

    ingest_flow(str(root), "sklearn-digits")
    pretrain_flow(str(root), None)
    specs = [RequestSpec(classes=[c], requester="benchmark") for c in CLASSES[:n]]
    t0 = time.perf_counter()
    if on_stack:
        from flows.deploy import deploy
        from tasks.submissions import submit

        deploy(ws, "benchmark")  # no worker: this process runs the flow (below)
        for s in specs:
            submit(ws, s)
    else:
        from tasks.requests import add_request

        for s in specs:
            add_request(ws, s)
    submit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = process_requests_flow(str(root))
    seconds = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    assert [r["status"] for r in out] == ["done"] * n, out
    return {"requests": n, "seconds": seconds, "per_request": seconds / n,
            "submit_seconds": submit_s}


def child_evidence(parallel: bool) -> dict:
    """One request with the retrain reference and MIA, serial or in parallel (embedded)."""
    from forgetting.config import Config, dump_config
    from tasks import environment
    from tasks.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="forgetting-stackbench-"))
    ws = Workspace.at(root)
    environment.apply(ws.state)
    (root / "params.yaml").write_text(dump_config(Config.model_validate(_params(
        {"membership_inference": True, "retrain_baseline": True, "parallel": parallel}))))
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from flows.process_requests import process_requests_flow
    from forgetting_cli.pipeline import init
    from tasks.ledger import RequestSpec
    from tasks.requests import add_request

    init(root)
    ingest_flow(str(root), "sklearn-digits")
    pretrain_flow(str(root), None)
    add_request(ws, RequestSpec(classes=["digit_3"], requester="benchmark"))
    t0 = time.perf_counter()
    out = process_requests_flow(str(root))
    seconds = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return {"parallel": parallel, "seconds": seconds, "status": out[0]["status"]}


def _child(args: list[str], env: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *args], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{args} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, arg = a.child[0], a.child[1]
        r = (child_requests(int(arg), a.child[2] == "stack") if kind == "requests"
             else child_evidence(arg == "1"))
        print(json.dumps(r))
        return r

    from forgetting_stack import Stack, free_port_base, read_env_file

    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING", "FORGET_"))}
    top = Path(tempfile.mkdtemp(prefix="forgetting-stackbench-", dir="/tmp"))
    top.chmod(0o711)
    base.update(TQDM_DISABLE="1", PREFECT_HOME=str(top / "prefect"),
                DVC_SITE_CACHE_DIR=str(top / "dvc-site"), TMPDIR=str(top))  # all removed below
    st = Stack(top / "stack")
    result: dict = {"requests": a.requests, "cpus": os.cpu_count()}
    try:
        t0 = time.perf_counter()
        st.up("127.0.0.1", free_port_base())
        result["stack_up_seconds"] = time.perf_counter() - t0
        stack_env = {**base, **read_env_file(st.client_file)}
        emb = _child(["requests", str(a.requests), "embedded"], base)
        stk = _child(["requests", str(a.requests), "stack"], stack_env)
        # on the stack's Prefect server (as a team runs it; on Prefect's temporary server a
        # Dask worker would start a temporary server of its own), MLflow and DVC local
        prefect_env = {**base, **{k: v for k, v in stack_env.items()
                                  if k.startswith("PREFECT_API")}}
        serial = _child(["evidence", "0"], prefect_env)
        par = _child(["evidence", "1"], prefect_env)
    finally:
        st.down()
        shutil.rmtree(top, ignore_errors=True)
    result.update(embedded=emb, stack=stk, evidence_serial=serial, evidence_parallel=par,
                  overhead_per_request=stk["per_request"] - emb["per_request"],
                  stack_vs_embedded=stk["per_request"] / emb["per_request"],
                  parallel_speedup=serial["seconds"] / par["seconds"])
    print(f"stack up (cold): {result['stack_up_seconds']:.1f} s")
    print(f"per request, {a.requests} one-class requests, evidence off: embedded "
          f"{emb['per_request']:.1f} s, stack {stk['per_request']:.1f} s "
          f"({result['stack_vs_embedded']:.2f}x; +{result['overhead_per_request']:.1f} s of "
          f"stack overhead per request; submitting took {stk['submit_seconds']:.1f} s in all)")
    print(f"one request with retrain reference + MIA: serial {serial['seconds']:.1f} s, "
          f"parallel {par['seconds']:.1f} s ({result['parallel_speedup']:.2f}x) on "
          f"{os.cpu_count()} CPUs")
    if a.json:  # the last line: recorded (with the machine) by readme_figures.py --only stack
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
