"""The pipeline for real: Prefect flows on a local server, MLflow on SQLite, DVC in a temp git
repo, the CLI in-process, and the registered model loaded in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from forgetting_cli.main import app

from .conftest import TINY
from .servers import free_port, server_process


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def workspace(prefect_server, tmp_path_factory):
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from tasks.workspace import Workspace

    root = tmp_path_factory.mktemp("ws")
    runner = CliRunner()
    cfg = {**TINY, "forget": {"epochs": 3}, "pretrain": {**TINY["pretrain"], "epochs": 12},
           "gates": {"max_acc_f": 0.1, "max_acc_r_drop": 0.2}}
    (root / "params.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["init", "--root", str(root)])
    assert res.exit_code == 0, res.output
    ingest_flow(str(root))
    assert pretrain_flow(str(root)) == 1
    return Workspace.at(root), runner


def _cli(runner, *args):
    return runner.invoke(app, [*args])


def test_requests_are_processed_in_order_registered_and_versioned(workspace):
    from flows.process_requests import process_requests_flow
    from tasks.versioning import status_clean

    ws, runner = workspace
    r1 = _cli(runner, "request", "add", "digit_0", "digit_1", "--reason", "asked", "--root",
              str(ws.root))
    r2 = _cli(runner, "request", "add", "digit_7", "--shots", "4", "--root", str(ws.root))
    assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output)
    out = process_requests_flow(str(ws.root))
    assert [r["id"] for r in out] == ["req-0001", "req-0002"]
    st = json.loads(_cli(runner, "status", "--json", "--root", str(ws.root)).output)
    assert st["model"] == "forgetting-vit" and st["tracking_uri"].startswith("sqlite:///")
    reqs = {r["id"]: r for r in st["requests"]}
    assert reqs["req-0001"]["status"] == "done" and reqs["req-0001"]["model_version"] == 2
    assert reqs["req-0001"]["acc_f"] <= 0.1
    assert reqs["req-0002"]["model_version"] == 3 and reqs["req-0002"]["parent_version"] == 2
    assert st["production_version"] == (3 if reqs["req-0002"]["status"] == "done" else 2)
    for key in ("id", "classes", "status", "model_version", "acc_f", "acc_r", "h_mean"):
        assert key in reqs["req-0001"]
    # DVC: data, base model, adapters and ledger tracked, pushed, nothing dirty
    for p in ("data/dataset.parquet.dvc", "data/models.dvc", "data/adapters.dvc",
              "data/requests.dvc"):
        assert (ws.root / p).is_file(), p
    assert status_clean(ws.root)
    assert any(ws.dvc_remote.rglob("*")), "nothing pushed to the local remote"
    # a second run finds nothing to do and registers nothing
    assert process_requests_flow(str(ws.root)) == []
    from tasks import registry

    c = registry.client(ws)
    assert len(c.search_model_versions(f"name = '{registry.MODEL_NAME}'")) == 3


def test_each_request_has_a_report_in_dvc_and_mlflow(workspace, tmp_path):
    from tasks import registry

    ws, runner = workspace
    stored = ws.root / "data" / "reports" / "req-0001"
    for f in ("report.md", "report.html", "report.json", "group_norms.png", "per_class.png",
              "training.png"):
        assert (stored / f).stat().st_size > 0, f
    md = (stored / "report.md").read_text()
    for needle in ("Acc_f (forgotten now)", "retrain", "Membership inference", "kept blocks",
                   "dataset_version", "digit_0"):
        assert needle in md, needle
    assert (ws.root / "data" / "reports.dvc").is_file()
    req = json.loads((ws.requests / "req-0001.json").read_text())
    assert 0.0 <= req["metrics"]["mia_auc"] <= 1.0 and "retrain_acc_r" in req["metrics"]
    c = registry.client(ws)
    listed = {a.path for a in c.list_artifacts(req["mlflow_run_id"], "report")}
    assert "report/report.md" in listed and "report/per_class.png" in listed
    from prefect.artifacts import Artifact  # what the Prefect UI shows for the request

    art = Artifact.get("request-req-0001")
    assert art is not None and art.type == "markdown", art
    assert "Acc_f" in art.data and "digit_0" in art.data, art.data
    res = _cli(runner, "report", "req-0001", "--out", str(tmp_path / "r"), "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "report.md").read_text() == md
    assert (tmp_path / "r" / "per_class.png").read_bytes()[:4] == b"\x89PNG"
    assert _cli(runner, "report", "req-0099", "--root", str(ws.root)).exit_code == 2


def test_registered_production_model_loads_in_a_fresh_process(workspace):
    ws, _ = workspace
    code = ("import mlflow, torch; m = mlflow.pytorch.load_model('models:/forgetting-vit@production');"
            "print(tuple(m(torch.zeros(2, 1, 16, 16)).shape))")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws.tracking_uri}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "(2, 10)"


def test_promote_and_rollback_move_production(workspace):
    ws, runner = workspace
    before = json.loads(_cli(runner, "status", "--json", "--root", str(ws.root)).output)
    assert _cli(runner, "promote", "1", "--reason", "test", "--root", str(ws.root)).exit_code == 0
    assert json.loads(_cli(runner, "status", "--json", "--root", str(ws.root)).output)[
        "production_version"] == 1
    res = _cli(runner, "rollback", "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    after = json.loads(_cli(runner, "status", "--json", "--root", str(ws.root)).output)
    assert after["production_version"] == before["production_version"]
    assert _cli(runner, "promote", "99", "--root", str(ws.root)).exit_code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digit_x"], "unknown class 'digit_x'"),
        ([], "classes"),
        (["digit_2", "digit_2"], "duplicate class in request"),
        (["digit_0"], "already"),
        (["../etc"], "invalid class name"),
        (["digit_2", "--shots", "5000"], "5000 shots asked"),
        ([f"digit_{i}" for i in range(2, 10) if i != 7], "every remaining class"),
    ],
)
def test_bad_requests_fail_clearly_and_change_nothing(workspace, args, message):
    ws, runner = workspace
    before = sorted(p.name for p in ws.requests.iterdir())
    res = _cli(runner, "request", "add", *args, "--root", str(ws.root))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert sorted(p.name for p in ws.requests.iterdir()) == before


def test_malformed_request_file_names_the_field(workspace, tmp_path):
    ws, runner = workspace
    f = tmp_path / "req.yaml"
    f.write_text("classes: [digit_3]\nshots: -2\n")
    res = _cli(runner, "request", "add", "--file", str(f), "--root", str(ws.root))
    assert res.exit_code == 2 and "shots" in res.output
    f.write_text("classes: [digit_3]\nshoots: 2\n")
    res = _cli(runner, "request", "add", "--file", str(f), "--root", str(ws.root))
    assert res.exit_code == 2 and "shoots" in res.output


def test_bad_params_file_names_the_field(workspace):
    ws, runner = workspace
    good = ws.params.read_text()
    try:
        ws.params.write_text(good.replace("forget:", "forget:\n  rnak: 4", 1))
        res = _cli(runner, "status", "--root", str(ws.root))
        assert res.exit_code == 2 and "forget.rnak" in res.output, res.output
    finally:
        ws.params.write_text(good)


def test_dataset_with_other_classes_or_a_corrupt_image_is_refused(workspace, tmp_path):
    from forgetting.model import file_sha256

    from .test_data import _folder

    ws, runner = workspace
    before = file_sha256(ws.dataset), sorted(p.name for p in ws.data.iterdir())
    _folder(tmp_path / "animals", classes=("cat", "dog", "emu"))
    res = _cli(runner, "ingest", "--source", str(tmp_path / "animals"), "--root", str(ws.root))
    assert res.exit_code == 2 and "does not match the model's classes" in res.output, res.output
    broken = tmp_path / "animals" / "cat" / "0.png"
    broken.write_bytes(broken.read_bytes()[:40])
    res = _cli(runner, "ingest", "--source", str(tmp_path / "animals"), "--root", str(ws.root))
    assert res.exit_code == 2 and "corrupt or truncated image" in res.output, res.output
    assert (file_sha256(ws.dataset), sorted(p.name for p in ws.data.iterdir())) == before
    assert not list(ws.work.glob("import-*"))


def test_bad_base_checkpoints_are_refused(prefect_server, tmp_path):
    import pickle

    import torch

    from flows.ingest import ingest_flow
    from forgetting.config import Config
    from forgetting.model import create_model, save_checkpoint
    from tasks import registry
    from tasks.workspace import Workspace

    runner = CliRunner()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    assert _cli(runner, "init", "--root", str(tmp_path)).exit_code == 0
    ingest_flow(str(tmp_path))
    model = create_model(Config.model_validate(TINY).model, 3)
    save_checkpoint(model, tmp_path / "three.safetensors", ["a", "b", "c"])
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": torch.nn.Linear(1, 1)}, f)  # a pickle of objects, not tensors
    for ckpt, message in (("three.safetensors", "differ from the dataset"),
                          ("evil.pt", "refused: only safetensors or weights-only"),
                          ("missing.safetensors", "checkpoint not found")):
        res = _cli(runner, "pretrain", "--checkpoint", str(tmp_path / ckpt), "--root",
                   str(tmp_path))
        assert res.exit_code == 2 and message in res.output, (ckpt, res.output)
    assert registry.alias_version(registry.client(Workspace.at(tmp_path)), "production") is None
    assert not (tmp_path / "data" / "models").exists()


def test_failures_leave_the_request_pending_until_a_healthy_run(workspace, monkeypatch):
    ws, runner = workspace
    res = _cli(runner, "request", "add", "digit_8", "--root", str(ws.root))
    assert res.exit_code == 0, res.output
    rid = res.output.split()[1].rstrip(":")
    adapter = ws.adapter_dir("req-0001") / "adapter_model.safetensors"
    good = adapter.read_bytes()
    try:  # a corrupted adapter in the production model's chain
        adapter.write_bytes(good[:-8] + b"\0" * 8)
        res = _cli(runner, "run", "--root", str(ws.root))
        assert res.exit_code == 2 and "does not match its recorded sha256" in res.output
    finally:
        adapter.write_bytes(good)
    req = json.loads((ws.requests / f"{rid}.json").read_text())
    assert req["status"] == "pending" and "sha256" in req["error"] and req["model_version"] is None
    with monkeypatch.context() as m:  # the tracking server is down
        m.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        m.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        res = _cli(runner, "run", "--root", str(ws.root))
        assert res.exit_code == 2 and "MLflow unreachable" in res.output, res.output
    assert json.loads((ws.requests / f"{rid}.json").read_text())["status"] == "pending"
    res = _cli(runner, "run", "--root", str(ws.root))
    assert res.exit_code == 0 and f"{rid}: " in res.output, res.output
    req = json.loads((ws.requests / f"{rid}.json").read_text())
    assert req["status"] in ("done", "failed_gate") and req["error"] is None
    assert req["model_version"] is not None and req["attempts"] == 2


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 (SQLite backend in a temp dir)."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
           f"sqlite:///{d / 'mlflow.db'}", "--default-artifact-root", (d / "art").as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, f"{url}/health", d / "server.log"):
        yield url


def test_pipeline_against_a_real_mlflow_server(prefect_server, mlflow_server, tmp_path,
                                               monkeypatch):
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from flows.process_requests import process_requests_flow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    runner = CliRunner()
    cfg = {**TINY, "forget": {"epochs": 2}, "pretrain": {**TINY["pretrain"], "epochs": 6},
           "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    assert runner.invoke(app, ["init", "--root", str(tmp_path)]).exit_code == 0
    ingest_flow(str(tmp_path))
    assert pretrain_flow(str(tmp_path)) == 1
    assert _cli(runner, "request", "add", "digit_4", "--root", str(tmp_path)).exit_code == 0
    out = process_requests_flow(str(tmp_path))
    assert out[0]["status"] == "done" and out[0]["model_version"] == 2
    st = json.loads(_cli(runner, "status", "--json", "--root", str(tmp_path)).output)
    assert st["tracking_uri"] == mlflow_server and st["production_version"] == 2
    assert not (tmp_path / ".forgetting" / "mlflow.db").exists()  # nothing went to the default


def test_served_deployment_picks_up_a_queued_request(workspace, tmp_path):
    """`forget serve --interval` against a real `prefect server start` process processes a
    request queued while it is serving."""
    import time

    ws, runner = workspace
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_UI_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    server_cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)]
    with server_process(server_cmd, f"{api}/health", tmp_path / "prefect-server.log", env):
        serve_env = {**env, "PREFECT_API_URL": api}
        serve_cmd = [sys.executable, "-m", "forgetting_cli", "serve", "--interval", "5",
                     "--root", str(ws.root), "--name", "test-serve"]
        with server_process(serve_cmd, f"{api}/health", tmp_path / "serve.log", serve_env):
            res = _cli(runner, "request", "add", "digit_5", "--root", str(ws.root))
            assert res.exit_code == 0, res.output
            rid = res.output.split()[1].rstrip(":")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                st = {r["id"]: r for r in json.loads(
                    _cli(runner, "status", "--json", "--root", str(ws.root)).output)["requests"]}
                if st[rid]["status"] in ("done", "failed_gate", "failed"):
                    break
                time.sleep(3)
            log = (tmp_path / "serve.log").read_text()
            assert st[rid]["status"] in ("done", "failed_gate"), log[-3000:]
            assert st[rid]["model_version"] is not None
