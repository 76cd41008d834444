"""Bytes the MLflow registry stores per model version: a whole-model export per version
(before) vs an adapter plus its lineage (now), for the digits model and a ViT-B/16.

    python benchmarks/registry_bytes.py [--json] [--models digits vit_b]

Random weights are enough to count bytes (nothing is downloaded). "Before" logs the model
as the pipeline did until this change (``mlflow.pytorch.log_model``, a ``torch.export``
program, every version); "now" logs the base once, each request as its sparse adapter
(``tasks.mlflow_model``), and one merged export for the version that becomes production.
Each version's model is then loaded back with ``mlflow.pyfunc.load_model`` and checked
against the model it stands for.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from forgetting.config import ModelConfig
from forgetting.lora import add_lora, apply_adapter, lora_groups, save_sparse_adapter
from forgetting.model import create_model, save_checkpoint
from forgetting.preprocess import input_shape
from tasks import registry
from tasks.workspace import Workspace

MODELS = {
    "digits": (ModelConfig(), 10),
    "vit_b": (ModelConfig(arch="vit_base_patch16_224", image_size=224, patch_size=16,
                          in_chans=3, depth=12, embed_dim=768, num_heads=12), 100),
}


def tree_bytes(uri: str) -> int:
    path = Path(uri.removeprefix("file://"))
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fake_adapter(model, out: Path, kept: list[int], seed: int) -> str:
    """A rank-8 adapter keeping ``kept`` groups, with non-zero B (as after training)."""
    torch.manual_seed(seed)
    peft = add_lora(model, 8, 8.0)
    for b in kept:
        for p in lora_groups(peft)[b]:
            torch.nn.init.normal_(p, std=0.01)
    return save_sparse_adapter(peft, kept, out)


def measure(name: str, cfg: ModelConfig, classes: int, work: Path) -> dict:
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each model its own store (sqlite file)
    ws = Workspace.at(work / name)
    os.environ["MLFLOW_TRACKING_URI"] = ws.tracking_uri
    c = registry.client(ws)
    torch.manual_seed(0)
    base = create_model(cfg, classes).eval()
    names = [f"c{i}" for i in range(classes)]
    ckpt = work / name / "base.safetensors"
    sha = save_checkpoint(base, ckpt, names)
    shape = input_shape(cfg)

    # before: the whole model as a torch.export program, as every version was logged
    t0 = time.perf_counter()
    with mlflow.start_run(experiment_id=registry.experiment_id(c, ws)):
        info = mlflow.pytorch.log_model(base, name="model", serialization_format="pt2",
                                        input_example=np.zeros((2, *shape), dtype=np.float32),
                                        pip_requirements=registry.PIP_REQUIREMENTS)
    before_seconds = time.perf_counter() - t0
    before = tree_bytes(c.get_logged_model(info.model_id).artifact_location)

    # now: base once, then two requests as adapters, the second promoted (merged export)
    run = registry.log_request_run(ws, "base", {}, {}, [], ckpt, sha, [], shape)
    v1 = registry.register(ws, "base", run, ckpt, {"checkpoint": "base.safetensors",
                                                   "checkpoint_sha256": sha})
    rows, parent, model = [], v1, base
    for i, kept in enumerate(([1, 3], [0, 2]), start=1):
        rid = f"req-{i:04d}"
        adapter = work / name / "adapters" / rid
        a_sha = fake_adapter(model, adapter, kept, seed=i)
        t0 = time.perf_counter()
        run = registry.log_request_run(ws, rid, {}, {}, [], adapter, a_sha,
                                       registry.lineage(c, parent), shape)
        seconds = time.perf_counter() - t0
        version = registry.register(ws, rid, run, adapter, {"parent_version": parent,
                                                            "adapter_sha256": a_sha})
        model = apply_adapter(model, adapter, a_sha)
        loc = c.get_logged_model(registry.logged_model(c, run)[1]).artifact_location
        weights = (adapter / "adapter_model.safetensors").stat().st_size
        rows.append({"version": version, "bytes": tree_bytes(loc), "adapter_bytes": weights,
                     "log_seconds": seconds})
        parent = version
    # the version that becomes production gets one merged export
    merged = work / name / "merged.safetensors"
    m_sha = save_checkpoint(model, merged, names)
    registry.store_merged(c, parent, merged, m_sha)
    x = torch.randn(2, *shape)
    loaded = mlflow.pyfunc.load_model(f"models:/{c.model_name}/{parent}")
    with torch.no_grad():
        want = model(x).argmax(-1).tolist()
    assert loaded.predict(x.numpy())["class_index"].tolist() == want, "pyfunc != chain"
    return {"model": name, "params_m": round(sum(p.numel() for p in base.parameters()) / 1e6, 2),
            "before_bytes_per_version": before, "before_log_seconds": before_seconds,
            "base_bytes": tree_bytes(c.get_logged_model(registry.logged_model(
                c, registry.find_run(c, registry.experiment_id(c, ws), "base"))[1])
                .artifact_location),
            "versions": rows, "production_export_bytes": merged.stat().st_size,
            "overhead_bytes": max(r["bytes"] - r["adapter_bytes"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    out = []
    with tempfile.TemporaryDirectory(prefix="registry-bytes-") as work:
        for name in args.models:
            cfg, classes = MODELS[name]
            r = measure(name, cfg, classes, Path(work))
            out.append(r)
            per = max(v["bytes"] for v in r["versions"])
            print(f"{name} ({r['params_m']} M params): before {r['before_bytes_per_version'] / 1e6:.2f}"
                  f" MB per version ({r['before_log_seconds']:.1f} s to log); now "
                  f"{per / 1e3:.1f} KB per request version = adapter "
                  f"{max(v['adapter_bytes'] for v in r['versions']) / 1e3:.1f} KB + "
                  f"{r['overhead_bytes'] / 1e3:.1f} KB (MLmodel, code, lineage), "
                  f"{per / r['before_bytes_per_version'] * 100:.2f} % of before; base once "
                  f"{r['base_bytes'] / 1e6:.2f} MB; merged production export "
                  f"{r['production_export_bytes'] / 1e6:.2f} MB")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
