"""benchmarks/gpu_check.py --tiny: the GPU check's code, at tiny size on the CPU, so the one
call a GPU session makes keeps working between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_part_at_tiny_size(cli_env, tmp_path):
    """(Its forget steps fork from the tests' server: it would start one of its own.)"""
    from .forkserver import server_env

    out = tmp_path / "gpu-tiny.json"
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--out",
                          str(out), "--work", str(tmp_path / "work")], cwd=REPO,
                         env=server_env(cli_env), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["failed"] == [] and r["tiny"] and r["device"] == "cpu"
    assert "skipped" in r["cuda_tests"]["summary"] or "passed" in r["cuda_tests"]["summary"]
    assert r["throughput"]["compile_backend"] == "aot_eager"  # traced, without a C++ build
    for key in ("eager", "compiled"):
        for what in ("forward", "gs_lora_step"):
            row = r["throughput"][key][what]
            assert row["img_s"] > 0 and row["of_peak"] is None  # no bf16 peak for a CPU
    assert r["request"]["status"] in ("done", "failed_gate")
    assert [s["command"] for s in r["request"]["steps"]] == [
        "init", "ingest", "pretrain", "request add class_000", "run", "status --json"]
    assert "every part passed" in res.stdout
    assert r["request"]["workspace"] == str(tmp_path / "work" / "ws")  # nothing left in /tmp
