"""`dvc repro` for real: the repo's dvc.yaml and stage code in a temp git + DVC repo, tiny
params; a second `dvc repro` runs nothing, a changed param reruns only what depends on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def _run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _write_params(repo: Path, params: dict) -> None:
    """Every key spelled out, as DVC needs each tracked params section present in the file."""
    from forgetting.config import Config, dump_config

    (repo / "params.yaml").write_text(dump_config(Config.model_validate(params)))


def test_dvc_repro_runs_the_stages_once_then_does_nothing(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for d in ("forgetting", "forgetting_cli"):
        shutil.copytree(REPO / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo)
    params = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 8}, "forget": {"epochs": 2},
              "requests": [{"classes": ["digit_3"]}, {"classes": ["digit_5"], "shots": 4}]}
    _write_params(repo, params)
    _run(repo, "git", "init", "-q")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")

    first = _dvc(repo, "repro")
    for stage in ("prepare", "pretrain", "forget", "evaluate"):
        assert f"Running stage '{stage}'" in first, first
    out = repo / "data" / "repro"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["classes"] for s in metrics["steps"]] == [["digit_3"], ["digit_5"]]
    assert metrics["steps"][1]["acc_o"] is not None  # digit_3, forgotten one step earlier
    assert (out / "adapters" / "step-2" / "adapter_model.safetensors").is_file()
    assert (out / "per_class.csv").read_text().count("\n") == 1 + 2 * 10
    assert "val_h_mean" in (out / "training.csv").read_text().splitlines()[0]
    assert (repo / "dvc.lock").is_file()
    shown = json.loads(_dvc(repo, "metrics", "show", "--json"))
    assert shown, "dvc metrics show found nothing"

    second = _dvc(repo, "repro")
    assert "Running stage" not in second, second
    assert "up to date" in _dvc(repo, "status")

    # a forget param changes: prepare and pretrain are reused, forget and evaluate rerun
    params["forget"]["epochs"] = 3
    _write_params(repo, params)
    third = _dvc(repo, "repro")
    assert "Running stage 'forget'" in third and "Running stage 'evaluate'" in third
    assert "Running stage 'pretrain'" not in third and "Running stage 'prepare'" not in third
