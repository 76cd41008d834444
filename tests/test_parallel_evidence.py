"""``evidence.parallel``: the retrain reference trains in a Dask worker process beside the
forgetting run. Both seed torch's global RNG, which is why it is a process and not a thread:
the forgetting run's adapter and the reference's figures must be what a serial run gives."""

from __future__ import annotations

import json

import pytest

from .conftest import MICRO, write_params
from .helpers import forget

pytestmark = pytest.mark.slow


def _run(cli_env, root, parallel: bool, threads: int) -> dict:
    """One request through real `forget` processes; off a terminal, a serial run prints the
    project's own lines and Prefect's flow-level ones (the parallel run's Dask worker is a
    process of its own, with Prefect's console logging)."""
    write_params(root, {**MICRO, "threads": threads, "evidence": {
        "retrain_baseline": True, "parallel": parallel, "membership_inference": False,
        "attacks": []}})
    outs = [forget(cli_env, root, *args) for args in (["init"], ["ingest"], ["pretrain"],
                                                      ["request", "add", "digit_4"], ["run"])]
    out = outs[-1]
    assert "req-0001: done" in out.stdout, out.stdout
    if parallel:
        return json.loads((root / "data" / "requests" / "req-0001.json").read_text())
    printed = "".join(o.stdout + o.stderr for o in outs)
    for noise in ("To track the changes with git", "UserWarning", "Downloading artifacts"):
        assert noise not in printed, noise
    # the engine's line per task ("Finished in state Completed()") is not printed; a task's
    # own lines are (the project's: what it did)
    engine = [line for line in printed.splitlines()
              if "Task run" in line and "Finished in state" in line]
    assert engine == [] and "req-0001: kept groups" in printed, printed[-3000:]
    assert "Flow run" in printed  # Prefect's flow-level lines stay
    return json.loads((root / "data" / "requests" / "req-0001.json").read_text())


def test_the_reference_in_parallel_gives_what_a_serial_run_gives(cli_env, tmp_path):
    """In parallel each of the two trainings gets half of ``threads``: the same figures as a
    serial run at that thread count (float sums depend on how work splits among threads)."""
    serial = _run(cli_env, tmp_path / "serial", parallel=False, threads=1)
    parallel = _run(cli_env, tmp_path / "parallel", parallel=True, threads=2)
    assert parallel["adapter_sha256"] == serial["adapter_sha256"]
    for k in ("acc_f", "acc_r", "retrain_acc_r"):
        assert parallel["metrics"][k] == serial["metrics"][k], k
    assert parallel["metrics"]["retrain_acc_r"] is not None
