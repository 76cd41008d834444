"""`dvc repro` for real: the repo's dvc.yaml and stage code in a temp git + DVC repo, micro
params. It runs once, then does nothing; a changed param reruns what depends on it; every
module a stage runs is one of its deps; a changed source folder is seen; and the request
pipeline, given the same params, makes the same base model and the same adapters, building on
the same model after a failed gate."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from .conftest import MICRO, write_params

REPO = Path(__file__).resolve().parents[1]
# step 1 (4 shots) meets max_class_drop 0: it fails the gate, so step 2 must build on the base
PARAMS = {**MICRO, "data": {"source": "data/sources/sklearn-digits.yaml"},
          "gates": {**MICRO["gates"], "max_class_drop": 0.0},
          "requests": [{"classes": ["digit_3"], "shots": 4}, {"classes": ["digit_5"]}]}


def _run(cwd: Path, *cmd: str) -> str:
    """As a user runs it with the venv not activated: the project's bin folder is not on PATH
    (the stage commands find the interpreter through scripts/python)."""
    venv_bin = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ["PATH"].split(":") if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                         env={**env, "PATH": path})
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _repo(path: Path, params: dict) -> Path:
    path.mkdir()
    for d in ("forgetting", "forgetting_cli", "tasks", "data/sources", "scripts"):
        shutil.copytree(REPO / d, path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", path)
    (path / ".venv").symlink_to(Path(sys.prefix))  # the venv `make` made, as in a clone
    write_params(path, params)
    _run(path, "git", "init", "-q")
    _dvc(path, "init", "-q")
    _dvc(path, "config", "core.analytics", "false")
    return path


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> dict:
    """The first `dvc repro`, and what it made (kept here: a later test changes the repo)."""
    from forgetting.model import file_sha256

    repo = _repo(tmp_path_factory.mktemp("repro") / "repo", PARAMS)
    first = _dvc(repo, "repro")
    out = repo / "data" / "repro"
    return {"repo": repo, "first": first, "out": out,
            "base_sha": file_sha256(out / "base.safetensors"),
            "steps": json.loads((out / "adapters" / "steps.json").read_text()),
            "metrics": json.loads((out / "metrics.json").read_text())}


@pytest.mark.slow
def test_dvc_repro_runs_the_stages_once_then_does_nothing(repro):
    repo, out = repro["repo"], repro["out"]
    for stage in ("prepare", "pretrain", "forget", "evaluate"):
        assert f"Running stage '{stage}'" in repro["first"], repro["first"]
    assert [s["classes"] for s in repro["metrics"]["steps"]] == [["digit_3"], ["digit_5"]]
    assert (out / "adapters" / "step-2" / "adapter_model.safetensors").is_file()
    assert (out / "per_class.csv").read_text().count("\n") == 1 + 2 * 10
    assert "val_h_mean" in (out / "training.csv").read_text().splitlines()[0]
    assert json.loads(_dvc(repo, "metrics", "show", "--json")), "dvc metrics show found nothing"
    assert "Running stage" not in _dvc(repo, "repro")
    assert "up to date" in _dvc(repo, "status")


@pytest.mark.slow
def test_a_failed_gate_is_not_built_on(repro):
    """Like the request pipeline, which builds on `production`: step 1 failed its gate, so
    step 2 starts from the base model and digit_3 is not counted as forgotten."""
    metrics = repro["metrics"]
    s1, s2 = metrics["steps"]
    assert not s1["gate_passed"] and "dropped by more than 0.0" in s1["gate"], s1
    assert s2["parent_step"] == 0 and s2["acc_o"] is None, s2
    assert metrics["production_step"] == (2 if s2["gate_passed"] else 0)


@pytest.mark.slow
def test_the_request_pipeline_makes_the_same_models_as_dvc_repro(repro, prefect_api,
                                                                  tmp_path):
    """Same dataset, params and seeds through Prefect + MLflow + DVC: the base checkpoint and
    each adapter are the same bytes as `dvc repro`'s (they used to differ: the LoRA init drew
    from a global RNG that evaluations had advanced by different amounts)."""
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from flows.process_requests import process_requests_flow
    from forgetting.model import file_sha256
    from forgetting_cli.pipeline import init
    from tasks.ledger import RequestSpec
    from tasks.requests import add_request
    from tasks.workspace import Workspace

    write_params(tmp_path, {**PARAMS, "data": {"source": "sklearn-digits"}})
    init(tmp_path)
    ws = Workspace.at(tmp_path)
    ingest_flow(str(tmp_path))
    pretrain_flow(str(tmp_path))
    assert file_sha256(ws.base_checkpoint) == repro["base_sha"]
    steps = repro["steps"]
    for r in PARAMS["requests"]:
        add_request(ws, RequestSpec(**r))
        process_requests_flow(str(tmp_path))
    reqs = [json.loads(p.read_text()) for p in sorted(ws.requests.glob("req-*.json"))]
    assert [r["adapter_sha256"] for r in reqs] == [s["adapter_sha256"] for s in steps]
    assert [r["status"] == "done" for r in reqs] == [s["gate"] == "passed" for s in steps]
    assert [r["gate"] for r in reqs] == [s["gate"] for s in steps]
    assert reqs[1]["parent_version"] == 1  # built on the base, as step 2 was


@pytest.mark.slow
def test_a_changed_param_invalidates_only_what_depends_on_it(repro):
    """A `forget` param makes `forget` stale (and so `evaluate`, downstream of its outputs),
    never `prepare` or `pretrain`."""
    repo = repro["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    try:
        params["forget"]["epochs"] += 1
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = _dvc(repo, "status")
        assert "forget:" in status and "modified:           forget" in status, status
        assert "prepare:" not in status and "pretrain:" not in status, status
        params["gates"]["max_class_drop"] = 0.5
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = _dvc(repo, "status")
        assert "evaluate:" in status and "pretrain:" not in status, status
    finally:
        params["forget"]["epochs"] -= 1
        params["gates"]["max_class_drop"] = PARAMS["gates"]["max_class_drop"]
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _dvc(repo, "status")


def _module_file(name: str) -> Path | None:
    for p in (REPO / (name.replace(".", "/") + ".py"), REPO / name.replace(".", "/") / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(nodes, package: str) -> set[str]:
    out: set[str] = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                    base = ".".join(parts + ([n.module] if n.module else []))
                out |= {base, *(f"{base}.{a.name}" for a in n.names)}
    return {m for m in out if _module_file(m)}


def _closure(mods: set[str]) -> set[str]:
    seen, todo = set(), list(mods)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = _module_file(m)
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        todo += _imports([ast.parse(f.read_text())], pkg)
    return {str(_module_file(m).relative_to(REPO)) for m in seen
            if _module_file(m).stat().st_size}


def _loaded_by_name(need: set[str]) -> set[str]:
    """What the method registry imports by name, which no import statement shows: each
    method's package (its spec and options) with the registry, and its objective module
    with the trainer."""
    from forgetting import methods

    mods: set[str] = set()
    if "forgetting/methods/__init__.py" in need:
        mods |= {f"forgetting.methods.{pkg}" for pkg in methods.BUILTIN}
    if "forgetting/train.py" in need:
        mods |= {s.objective.partition(":")[0] for s in methods.specs()}
    return _closure(mods) if mods else set()


def _covered(path: str, deps: list[str]) -> bool:
    """``path`` is a dep itself or lies in a folder that is one."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_each_stage_depends_on_every_module_it_runs():
    """A stage whose code changed must not be "up to date": its deps are the import closure
    of its function in forgetting_cli/repro.py (plus the helpers it calls, and the modules
    the method registry loads by name)."""
    tree = ast.parse((REPO / "forgetting_cli/repro.py").read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, fname in (("prepare", "prepare"), ("pretrain", "pretrain_stage"),
                         ("forget", "forget"), ("evaluate", "evaluate_stage")):
        f = funcs[fname]
        called = {n.func.id for n in ast.walk(f) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id in funcs}
        need = _closure(_imports(top + [f, *(funcs[c] for c in called)], "forgetting_cli"))
        need.add("forgetting_cli/repro.py")
        need |= _loaded_by_name(need)
        missing = {p for p in need if not _covered(p, stages[stage]["deps"])}
        assert not missing, f"dvc.yaml stage {stage!r} lacks deps {sorted(missing)}"


def test_dvc_status_sees_a_changed_source_folder(tmp_path):
    """With `data.source` an ImageFolder, an added image makes `prepare` stale."""
    from .test_data import _folder

    src = tmp_path / "images"
    _folder(src, classes=("cat", "dog", "emu"), n=6, mode="L")
    repo = _repo(tmp_path / "repo", {**MICRO, "data": {"source": str(src)}})
    _dvc(repo, "repro", "prepare")
    assert "up to date" in _dvc(repo, "status", "prepare")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(src / "cat" / "new.png")
    status = _dvc(repo, "status", "prepare")
    assert "changed deps" in status and str(src) in status, status
