"""The command line as a new user meets it: outside a workspace it refuses and creates nothing;
a failure is one `error:` line (the traceback with --verbose); SIGTERM stops the temporary
Prefect server it started instead of leaving it orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from .conftest import MICRO, write_params
from .helpers import cli, forget


@pytest.mark.parametrize("args", [["status"], ["run"], ["request", "add", "digit_0"],
                                  ["request", "cancel", "req-0001", "--reason", "x"],
                                  ["report", "req-0001"], ["purge", "req-0001"],
                                  ["promote", "1"], ["rollback"], ["ingest"], ["pretrain"]])
def test_commands_outside_a_workspace_refuse_and_create_nothing(tmp_path, args):
    res = cli(*args, "--root", tmp_path)
    assert res.exit_code == 2, res.output
    assert f"error: not a workspace: {tmp_path} has no params.yaml or .dvc/" in res.output
    assert "forget init" in res.output
    assert list(tmp_path.iterdir()) == []  # no .forgetting/mlflow.db, no lock, nothing


def test_a_failure_is_one_error_line_and_the_traceback_needs_verbose(cli_env, tmp_path):
    from .test_data import _folder

    root = tmp_path / "ws"
    write_params(root, MICRO)
    forget(cli_env, root, "init")
    _folder(tmp_path / "imgs", size=28, mode="L")  # 28x28 images, data.image_size 16
    res = forget(cli_env, root, "ingest", "--source", str(tmp_path / "imgs"), check=False)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not 16x16" in errors[0] and "--resize" in errors[0], res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == errors[0]
    assert "Traceback" not in res.stderr and "ERROR" not in res.stderr, res.stderr
    loud = forget(cli_env, root, "--verbose", "ingest", "--source", str(tmp_path / "imgs"),
                  check=False)
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    assert loud.stderr.rstrip().splitlines()[-1] == errors[0]
    assert not (root / "data" / "dataset.parquet").exists()
    # allowed explicitly, the resize is done, reported and recorded in params.yaml
    ok = forget(cli_env, root, "ingest", "--source", str(tmp_path / "imgs"), "--resize")
    assert "resized 28x28 -> 16x16: 8 images" in ok.stdout, ok.stdout
    params = (root / "params.yaml").read_text()
    assert f"source: {tmp_path / 'imgs'}" in params and "resize: true" in params
    log = subprocess.run(["git", "log", "-1", "--name-only", "--format=%s"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    assert "params.yaml" in log and "data/dataset.parquet.dvc" in log, log


@pytest.mark.slow
def test_sigterm_stops_the_temporary_prefect_server(tmp_path):
    root = tmp_path / "ws"
    write_params(root, MICRO)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # temporary server
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    forget(env, root, "init")
    proc = subprocess.Popen([sys.executable, "-m", "forgetting_cli", "ingest", "--root",
                             str(root)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    server = None
    while server is None:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        kids = psutil.Process(proc.pid).children(recursive=True)
        server = next((k for k in kids if "uvicorn" in " ".join(k.cmdline())), None)
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    server.wait(timeout=30) if server.is_running() else None
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
