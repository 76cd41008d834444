"""The pipeline for real: Prefect flows on a local server, MLflow on SQLite, DVC in a temp git
repo, the CLI in-process, and the registered model loaded in a fresh process.

The module's workspace is built once by the ``processed`` fixture (two requests, the second
failing the per-class gate); tests read what it returns, and a test that changes the
workspace puts back what it changed, so no test depends on another one having run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from .conftest import MICRO, TINY, write_params
from .helpers import cli, poll, workspace
from .servers import free_port, server_process, wait_for

PARAMS = {**TINY, "forget": {"epochs": 2}, "pretrain": {**TINY["pretrain"], "epochs": 8},
          "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0, "max_class_drop": 1.0,
                    "evidence": []},
          # every attack, at a cost a test can pay (the figures are not what is tested here),
          # against the retrain reference (the partition models': tests/test_partition.py)
          "evidence": {"reference": "retrain", "reference_models": 2, "reference_epochs": 2,
                       "relearn_max_steps": 5, "relearn_repeats": 2}}


def _set_params(ws, **sections) -> None:
    _, text = ws.params_with(sections)
    ws.write_params(text)


@pytest.fixture(scope="module")
def processed(prefect_api, tmp_path_factory):
    """req-0001 (digit_0, digit_1, full data, FG-OrIU) passes the gates; req-0002 (digit_7,
    4 shots, GS-LoRA++) is
    processed with ``max_class_drop: 0`` (the mean gates wide open), so the worst retained
    class it damages fails it. Afterwards the gates are open again and the retrain reference
    off, for the tests that queue more requests."""
    from flows.process_requests import process_requests_flow

    root = tmp_path_factory.mktemp("ws")
    ws, _ = workspace(root, PARAMS)
    r1 = cli("request", "add", "digit_0", "digit_1", "--method", "fg-oriu", "--reason", "asked",
              "--root", str(root))
    assert r1.exit_code == 0, r1.output
    out1 = process_requests_flow(str(root))
    _set_params(ws, gates={"max_class_drop": 0.0})
    r2 = cli("request", "add", "digit_7", "--shots", "4", "--root", str(root))
    assert r2.exit_code == 0, r2.output
    out2 = process_requests_flow(str(root))
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root,
                               capture_output=True, text=True, check=True).stdout
    _set_params(ws, gates={"max_class_drop": 1.0, "evidence": []},
                evidence={"retrain_baseline": False})
    return {"ws": ws, "out": out1 + out2, "params_at_req2": yaml.safe_load(committed)}


def _status(ws) -> dict:
    res = cli("status", "--json", "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_requests_are_processed_in_order_registered_and_versioned(processed):
    from flows.process_requests import process_requests_flow
    from tasks import registry
    from tasks.dvc import status_clean

    ws = processed["ws"]
    assert [(r["id"], r["status"], r["model_version"]) for r in processed["out"]] == [
        ("req-0001", "done", 2), ("req-0002", "failed_gate", 3)]
    st = _status(ws)
    assert st["model"] == "forgetting-vit" and st["tracking_uri"].startswith("sqlite:///")
    reqs = {r["id"]: r for r in st["requests"]}
    assert reqs["req-0001"]["acc_f"] <= 0.1 and reqs["req-0001"]["parent_version"] == 1
    assert (reqs["req-0001"]["method"], reqs["req-0002"]["method"]) == ("fg-oriu", "gs-lora++")
    from tasks.contracts import TrainingSummary

    summary = TrainingSummary.model_validate_json(
        (ws.adapter_dir("req-0001") / "training.json").read_text())
    assert len(summary.subspace_dims["fc1"]) == TINY["model"]["depth"]
    assert summary.method == "fg-oriu" and summary.kept_groups
    assert reqs["req-0002"]["parent_version"] == 2
    assert (st["production_version"], st["candidate_version"]) == (2, 3)
    # DVC: data, base model, adapters and ledger tracked, pushed, nothing dirty
    for p in ("data/dataset.parquet.dvc", "data/models.dvc", "data/adapters.dvc",
              "data/requests.dvc", "data/reports.dvc"):
        assert (ws.root / p).is_file(), p
    assert status_clean(ws.root)
    assert any(ws.dvc_remote.rglob("*")), "nothing pushed to the local remote"
    # a second run finds nothing to do and registers nothing
    assert process_requests_flow(str(ws.root)) == []
    c = registry.client(ws)
    assert len(c.search_model_versions(f"name = '{c.model_name}'")) == 3
    # each request's flow run is named after it (what the UI lists; what a log line says)
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as pc:
        runs = pc.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(
            any_=["process-request"])))
    assert sorted(r.name for r in runs if r.parameters.get("root") == str(ws.root)) == [
        "req-0001", "req-0002"]


def test_the_per_class_gate_stops_a_request_that_damages_one_class(processed):
    """The mean retained drop was allowed (max_acc_r_drop 1.0); the worst class was not."""
    from forgetting.gates import class_drops
    from tasks import registry

    ws = processed["ws"]
    req = json.loads((ws.requests / "req-0002.json").read_text())
    m = req["metrics"]
    worst = class_drops(m["before_per_class"], m["per_class"], ["digit_0", "digit_1", "digit_7"])
    assert worst[0][3] > 0, worst  # what makes this test meaningful: some class lost images
    assert req["status"] == "failed_gate"
    assert req["gate"].startswith("1 retained class") or "retained classes dropped" in req["gate"]
    assert f"{worst[0][0]} {worst[0][1]:.3f} -> {worst[0][2]:.3f}" in req["gate"], req["gate"]
    c = registry.client(ws)
    assert registry.alias_version(c, "production") == 2  # the damaged model did not replace it
    assert registry.version_tags(c, 3)["gate"] == req["gate"]
    report = (ws.report_dir("req-0002") / "report.md").read_text()
    assert req["gate"].replace("|", "\\|") in report
    # the report's per-class table starts with the class the gate named
    first = next(line for line in report.splitlines() if "| retained |" in line)
    assert first.startswith(f"| {worst[0][0]} | retained |"), first


def test_params_are_committed_with_each_request(processed):
    ws = processed["ws"]
    assert processed["params_at_req2"]["gates"]["max_class_drop"] == 0.0
    log = subprocess.run(["git", "log", "--format=%s", "--", "params.yaml"], cwd=ws.root,
                         capture_output=True, text=True, check=True).stdout
    assert "request req-0002: failed_gate" in log and "forget init" in log, log


def test_each_request_has_a_report_in_dvc_and_mlflow(processed, tmp_path):
    from tasks import registry

    ws = processed["ws"]
    stored = ws.report_dir("req-0001")
    attacks = ("membership", "linear_probe", "identification", "relearning")
    for f in ("report.md", "report.html", "report.json", "group_norms.png", "per_class.png",
              "training.png", *(f"evidence_{a}.png" for a in attacks)):
        assert (stored / f).stat().st_size > 0, f
    md = (stored / "report.md").read_text()
    for needle in ("Acc_f (forgotten now)", "retrain", "Membership inference", "kept blocks",
                   "dataset_version", "digit_0", "speed-up",
                   "Evidence against the retrain reference", "k-NN identification accuracy",
                   "Seconds per attack"):
        assert needle in md, needle
    # every attack's verdict on the candidate, and its figures on all three models
    ev = json.loads((stored / "report.json").read_text())["evidence"]
    assert [a["name"] for a in ev["attacks"]] == list(attacks)
    for a in ev["attacks"]:
        assert a["now"]["verdict"].split(":")[0] in (
            "indistinguishable from retrain within its noise", "retains more than retrain",
            "below retrain (a trace of its own, not knowledge)"), a
        assert all(a["now"]["figures"][k]["value"] is not None
                   for k in ("before (parent)", "after forgetting", "retrain")), a
    req = json.loads((ws.requests / "req-0001.json").read_text())
    assert req["metrics"]["retrain_acc_r"] > 0.5 and req["metrics"]["retrain_seconds"] > 0
    c = registry.client(ws)
    listed = {a.path for a in c.list_artifacts(req["mlflow_run_id"], "report")}
    assert "report/report.md" in listed and "report/per_class.png" in listed
    assert "report/evidence_identification.png" in listed
    logged = c.get_run(req["mlflow_run_id"]).data.metrics
    for a in attacks:
        assert {f"evidence/{a}", f"before_evidence/{a}", f"retrain_evidence/{a}"} <= set(logged)
    # what the Prefect UI shows for the request (the session's server also holds other
    # tests' workspaces, named "forgetting" too: this one's is the one about digit_0)
    arts = [a for a in _artifacts("forgetting-req-0001") if "digit_0" in a.data]
    assert arts and arts[0].type == "markdown" and "Acc_f" in arts[0].data, arts
    res = cli("report", "req-0001", "--out", str(tmp_path / "r"), "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "report.md").read_text() == md
    assert (tmp_path / "r" / "per_class.png").read_bytes() == (stored / "per_class.png").read_bytes()
    assert cli("report", "req-0099", "--root", str(ws.root)).exit_code == 2


def _artifacts(key: str) -> list:
    """Every Prefect artifact under ``key``, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC)


def test_report_never_writes_over_a_folder_it_did_not_make(processed, tmp_path):
    """`forget report --out data` used to delete the workspace's own data folder."""
    ws = processed["ws"]
    before = sorted(str(p.relative_to(ws.root)) for p in ws.data.rglob("*"))
    res = cli("report", "req-0001", "--out", str(ws.data), "--root", str(ws.root))
    assert res.exit_code == 2, res.output
    assert "is not empty and is not a report folder written by this program" in res.output
    assert sorted(str(p.relative_to(ws.root)) for p in ws.data.rglob("*")) == before
    home = tmp_path / "Documents"
    home.mkdir()
    (home / "cv.pdf").write_bytes(b"%PDF")
    res = cli("report", "req-0001", "--out", str(home), "--root", str(ws.root))
    assert res.exit_code == 2 and (home / "cv.pdf").read_bytes() == b"%PDF"


def _plain_shell(home) -> dict:
    """A shell's environment with no virtualenv, nothing on PATH from it and no offline
    settings: where a printed command (`ui_commands`) must work as printed. Its home and
    temporary folder are the test's (the served model's torch import makes a folder in it)."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home)}


def _predictions(ws, version: int, x) -> list[int]:
    """What the model of ``version``, rebuilt from the DVC-tracked files, predicts."""
    from tasks.model_tasks import model_for_version

    model, _ = model_for_version(ws, version)
    with torch.no_grad():
        return model(x).argmax(-1).tolist()


def test_production_model_loads_in_one_line_and_serves_over_http(processed, tmp_path):
    """`mlflow.pyfunc.load_model("models:/forgetting-vit@production")` in a fresh process, and
    `mlflow models serve` (a real server on 127.0.0.1, started as `forget demo` prints it)
    answering an HTTP request: both give
    the predictions of the model the adapter chain rebuilds (v3, not production, through
    its lineage: the base, v2's adapter and its own)."""
    import urllib.request

    from forgetting_cli.pipeline import ui_commands
    from tasks import registry
    from tasks.model_tasks import workspace_splits

    ws = processed["ws"]
    c = registry.client(ws)
    assert registry.alias_version(c, "production") == 2
    assert registry.merged_versions(c) == [2]  # production's standalone export, and only it
    assert [(p["version"], p["kind"]) for p in registry.lineage(c, 2)] == [(1, "full"),
                                                                         (2, "adapter")]
    test = workspace_splits(ws)["test"]
    x = torch.stack([test[i][0] for i in range(6)])
    want = _predictions(ws, 2, x)
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws.tracking_uri}
    code = ("import sys, json, mlflow, numpy as np; x = np.load(sys.argv[1]); "
            "print(json.dumps([mlflow.pyfunc.load_model(uri).predict(x)['class_index'].tolist()"
            " for uri in ('models:/forgetting-vit@production', 'models:/forgetting-vit/3')]))")
    np.save(tmp_path / "x.npy", x.numpy())
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [want, _predictions(ws, 3, x)]
    # served by the command `forget demo` prints (`ui_commands`), run as printed
    cmd = ["bash", "-c", "exec " + ui_commands(ws)["Serve production"]]
    assert "DO_NOT_TRACK=true" in cmd[-1] and "--port 5001" in cmd[-1]
    port = 5001
    # what a client holds: the images themselves, as PNG files
    pngs = []
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(test.image_uint8(i)[0].numpy()).save(buf, format="PNG")
        pngs.append(base64.b64encode(buf.getvalue()).decode())

    def post(payload: dict) -> list[dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]

    with server_process(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log",
                        env=_plain_shell(tmp_path), timeout=240):
        preds = post({"inputs": x.numpy().tolist()})  # preprocessed tensors
        from_png = post({"inputs": {"image": pngs}})  # the README's call
        from_array = post({"inputs": test.image_uint8(0)[0].numpy().tolist()})  # uint8 H x W
    assert [p["class_index"] for p in preds] == want
    assert all(p["class"].startswith("digit_") and 0 < p["probability"] <= 1 for p in preds)
    for got in (from_png, from_array):
        for g, p in zip(got, preds, strict=False):
            assert g["class"] == p["class"] and g["class_index"] == p["class_index"]
            assert g["probabilities"] == pytest.approx(p["probabilities"], abs=1e-6)
    assert len(from_png) == 6 and len(from_array) == 1


def test_promote_and_rollback_move_production(processed):
    from tasks import registry

    ws = processed["ws"]
    c = registry.client(ws)
    exported = registry.version_tags(c, 2)["merged_uri"]
    assert cli("promote", "3", "--reason", "reviewed", "--root", str(ws.root)).exit_code == 0
    assert _status(ws)["production_version"] == 3
    # one merged export in the registry, production's: v2's went when production moved
    assert registry.merged_versions(c) == [3]
    assert not os.path.exists(exported.removeprefix("file://"))
    res = cli("rollback", "--reason", "test", "--root", str(ws.root))
    assert res.exit_code == 0 and "production -> v2 (rolled back from v3)" in res.output
    assert _status(ws)["production_version"] == 2
    assert registry.production_history(registry.client(ws)) == [1, 2]
    assert registry.merged_versions(c) == [2]
    assert cli("promote", "99", "--root", str(ws.root)).exit_code == 2


def test_the_fast_registry_reader_agrees_with_mlflow(processed):
    from tasks.registry_reader import ClientReader, SqliteReader, reader

    ws = processed["ws"]
    fast, slow = reader(ws), ClientReader(ws)
    assert isinstance(fast, SqliteReader)
    for alias in ("production", "candidate", "nonexistent"):
        assert fast.alias_version(alias) == slow.alias_version(alias)
    for v in (1, 2, 3):
        assert fast.version_tags(v) == slow.version_tags(v)
    for rid in ("base", "req-0001", "req-0002", "req-0099"):
        assert fast.version_for_request(rid) == slow.version_for_request(rid)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digit_x"], "unknown class 'digit_x'"),
        ([], "classes"),
        (["digit_2", "digit_2"], "duplicate class in request"),
        (["digit_0"], "already forgotten"),
        (["../etc"], "invalid class name"),
        (["digit_2", "--shots", "5000"], "5000 shots asked"),
        ([f"digit_{i}" for i in range(2, 10)], "every remaining class"),
    ],
)
def test_bad_requests_fail_clearly_and_change_nothing(processed, args, message):
    ws = processed["ws"]
    before = sorted(p.name for p in ws.requests.iterdir())
    res = cli("request", "add", *args, "--root", str(ws.root))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert sorted(p.name for p in ws.requests.iterdir()) == before


def test_malformed_request_file_names_the_field(processed, tmp_path):
    ws = processed["ws"]
    f = tmp_path / "req.yaml"
    f.write_text("classes: [digit_3]\nshots: -2\n")
    res = cli("request", "add", "--file", str(f), "--root", str(ws.root))
    assert res.exit_code == 2 and "shots" in res.output
    f.write_text("classes: [digit_3]\nshoots: 2\n")
    res = cli("request", "add", "--file", str(f), "--root", str(ws.root))
    assert res.exit_code == 2 and "shoots" in res.output


def test_bad_params_file_names_the_field(processed):
    ws = processed["ws"]
    good = ws.params.read_text()
    try:
        ws.params.write_text(good.replace("forget:", "forget:\n  rnak: 4", 1))
        res = cli("status", "--root", str(ws.root))
        assert res.exit_code == 2 and "forget.rnak" in res.output, res.output
    finally:
        ws.params.write_text(good)


def test_dataset_with_other_classes_or_a_corrupt_image_is_refused(processed, tmp_path):
    from forgetting.model import file_sha256

    from .test_data import _folder

    ws = processed["ws"]
    before = file_sha256(ws.dataset), sorted(p.name for p in ws.data.iterdir()), \
        ws.params.read_text()
    _folder(tmp_path / "animals", classes=("cat", "dog", "emu"), mode="L")
    res = cli("ingest", "--source", str(tmp_path / "animals"), "--root", str(ws.root))
    assert res.exit_code == 2 and "does not match the model's classes" in res.output, res.output
    broken = tmp_path / "animals" / "cat" / "0.png"
    broken.write_bytes(broken.read_bytes()[:40])
    res = cli("ingest", "--source", str(tmp_path / "animals"), "--root", str(ws.root))
    assert res.exit_code == 2 and "corrupt or truncated image" in res.output, res.output
    assert (file_sha256(ws.dataset), sorted(p.name for p in ws.data.iterdir()),
            ws.params.read_text()) == before
    assert not list(ws.work.glob("import-*"))


def test_bad_base_checkpoints_are_refused(prefect_api, tmp_path):
    import pickle

    import torch

    from flows.ingest import ingest_flow
    from forgetting.config import Config
    from forgetting.model import create_model, save_checkpoint
    from tasks.registry_reader import reader
    from tasks.workspace import Workspace

    write_params(tmp_path, MICRO)
    assert cli("init", "--root", str(tmp_path)).exit_code == 0
    ingest_flow(str(tmp_path))
    model = create_model(Config.model_validate(MICRO).model, 3)
    save_checkpoint(model, tmp_path / "three.safetensors", ["a", "b", "c"])
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": torch.nn.Linear(1, 1)}, f)  # a pickle of objects, not tensors
    for ckpt, message in (("three.safetensors", "differ from the dataset"),
                          ("evil.pt", "refused: only safetensors or weights-only"),
                          ("missing.safetensors", "checkpoint not found")):
        res = cli("pretrain", "--checkpoint", str(tmp_path / ckpt), "--root", str(tmp_path))
        assert res.exit_code == 2 and message in res.output, (ckpt, res.output)
    assert reader(Workspace.at(tmp_path)).alias_version("production") is None
    assert not (tmp_path / "data" / "models").exists()


@pytest.mark.slow
def test_failures_leave_the_request_pending_until_a_healthy_run(processed, monkeypatch):
    ws = processed["ws"]
    res = cli("request", "add", "digit_8", "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    rid = res.output.split()[1].rstrip(":")
    adapter = ws.adapter_dir("req-0001") / "adapter_model.safetensors"
    good = adapter.read_bytes()
    try:  # a corrupted adapter in the production model's chain
        adapter.write_bytes(good[:-8] + b"\0" * 8)
        res = cli("run", "--root", str(ws.root))
        assert res.exit_code == 2 and "does not match its recorded sha256" in res.output
    finally:
        adapter.write_bytes(good)
    req = json.loads((ws.requests / f"{rid}.json").read_text())
    assert req["status"] == "pending" and "sha256" in req["error"] and req["model_version"] is None
    with monkeypatch.context() as m:  # the tracking server is down
        m.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        res = cli("run", "--root", str(ws.root))
        assert res.exit_code == 2 and "MLflow unreachable" in res.output, res.output
    assert json.loads((ws.requests / f"{rid}.json").read_text())["status"] == "pending"
    res = cli("run", "--root", str(ws.root))
    assert res.exit_code == 0 and f"{rid}: done" in res.output, res.output
    req = json.loads((ws.requests / f"{rid}.json").read_text())
    assert req["status"] == "done" and req["error"] is None
    assert req["model_version"] > 3 and req["parent_version"] == 2 and req["attempts"] == 2


def test_a_cancelled_request_leaves_the_queue_with_its_reason(processed):
    from flows.process_requests import process_requests_flow
    from tasks.dvc import status_clean

    ws = processed["ws"]
    res = cli("request", "add", "digit_9", "--root", str(ws.root))
    rid = res.output.split()[1].rstrip(":")
    res = cli("request", "cancel", rid, "--root", str(ws.root))
    assert res.exit_code == 2 and "give the reason" in res.output
    res = cli("request", "cancel", rid, "--reason", "requester withdrew", "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    req = json.loads((ws.requests / f"{rid}.json").read_text())
    assert req["status"] == "cancelled" and req["cancel_reason"] == "requester withdrew"
    assert req["history"][-1]["note"] == "cancelled by cli: requester withdrew"
    assert status_clean(ws.root)  # the audit record is committed (DVC + git) at once
    assert all(r["id"] != rid for r in process_requests_flow(str(ws.root)))
    assert json.loads((ws.requests / f"{rid}.json").read_text())["status"] == "cancelled"
    res = cli("request", "cancel", "req-0001", "--reason", "x", "--root", str(ws.root))
    assert res.exit_code == 2 and "req-0001 is done" in res.output
    # the class is free again
    res = cli("request", "add", "digit_9", "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    again = res.output.split()[1].rstrip(":")
    assert cli("request", "cancel", again, "--reason", "tidy", "--root", str(ws.root)
                ).exit_code == 0


@pytest.mark.slow
def test_printed_ui_commands_work_as_printed_and_serve_a_deployment(processed, cli_env, tmp_path):
    """What `forget demo` prints (`ui_commands`) runs in a plain shell: no activated
    virtualenv, nothing on PATH from it, telemetry off in the command itself (its model
    server: test_production_model_loads_in_one_line_and_serves_over_http). Then `forget
    serve --interval` (forked from the tests' fork server) against the printed Prefect server
    processes a request queued while it is serving (one server for both: each start costs
    ~10 CPU-s here)."""
    from forgetting_cli.pipeline import ui_commands

    from .forkserver import command

    ws = processed["ws"]
    cmds = ui_commands(ws)
    env = _plain_shell(tmp_path)
    dvc = subprocess.run(["bash", "-c", cmds["DVC"]], env=env, capture_output=True, text=True,
                         timeout=120)
    assert dvc.returncode == 0, dvc.stderr
    api = "http://127.0.0.1:4200/api"
    urls = {"MLflow UI": "http://127.0.0.1:5000/health", "Prefect UI": f"{api}/health"}
    # (the scheduler creates the served deployment's runs every 2 s, not every 60)
    server_env = {"Prefect UI": {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}}
    with contextlib.ExitStack() as servers:  # all start at once: each takes ~12 s here
        for what, url in urls.items():
            assert "DO_NOT_TRACK=true" in cmds[what]
            servers.enter_context(server_process(["bash", "-c", "exec " + cmds[what]], url,
                                                 tmp_path / f"{what}.log", wait=False,
                                                 env={**env, **server_env.get(what, {})}))
        for url in urls.values():
            wait_for(url)
        assert f"PREFECT_HOME={ws.state / 'prefect'}" in shlex.split(cmds["Prefect UI"])

        serve_env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
                     "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        serve_cmd, serve_env = command(["serve", "--interval", "3", "--root", str(ws.root),
                                        "--name", "test-serve"], serve_env)
        with server_process(serve_cmd, f"{api}/health", tmp_path / "serve.log", serve_env):
            res = cli("request", "add", "digit_5", "--root", str(ws.root))
            assert res.exit_code == 0, res.output
            rid = res.output.split()[1].rstrip(":")

            def state() -> dict:
                return {r["id"]: r for r in _status(ws)["requests"]}[rid]

            poll(lambda: state()["status"] not in ("pending", "running"), f"{rid} processed",
                 300, every=3)
            st = state()
            log = (tmp_path / "serve.log").read_text()
            assert st["status"] == "done", log[-3000:]
            assert st["model_version"] is not None
