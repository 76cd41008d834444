"""The stages of ``dvc.yaml``: prepare -> pretrain -> forget -> evaluate.

DVC is the orchestrator here, so these call the library directly (no Prefect, no MLflow):
``dvc repro`` reruns a stage only when its code, params (``params.yaml``) or inputs change.
Everything is written under ``data/repro/`` (a path cannot be both a stage output and the
``dvc add``-ed dataset of the request pipeline), each file to a temp path and renamed.

The request chain follows the same rule as the request pipeline: a request builds on the last
model that passed the gates (``forgetting.gates``, on the test split), so a request that fails
them is recorded and its adapter kept, but the next one does not build on it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from forgetting.files import replace_durably, write_json_atomic, write_text_atomic

app = typer.Typer(help="Stages run by `dvc repro` (see dvc.yaml).", no_args_is_help=True)
Params = Annotated[Path, typer.Option(help="params.yaml")]
Out = Annotated[Path, typer.Option(help="output folder")]


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _config(params: Path):
    from forgetting.config import load_config

    return load_config(params if params.exists() else None)


def _setup(params: Path):
    """The config, and the runtime it asks for (threads, deterministic kernels, device)."""
    from forgetting.runtime import setup_runtime

    cfg = _config(params)
    return cfg, setup_runtime(cfg)


def _splits(out: Path, cfg):
    from forgetting.datasets import splits

    return splits(out / "dataset.parquet", cfg.model)


@app.command()
def prepare(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Import the configured source (``data.source``: a folder, a .parquet file or a source
    descriptor such as data/sources/sklearn-digits.yaml) to Parquet."""
    from forgetting.data import import_source

    cfg = _config(params)  # no torch: importing is decoding and encoding images
    dst = out / "dataset.parquet"
    info, report = import_source(cfg.data.source, dst, cfg.data, cfg.model.in_chans)
    for line in report.lines():
        typer.echo(f"  {line}")
    typer.echo(f"{dst}: {info.num_rows} images, {info.num_classes} classes, "
               f"version {info.content_hash[:12]}")


@app.command("pretrain")
def pretrain_stage(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Pretrain the base ViT on every class."""
    from forgetting.model import save_checkpoint
    from forgetting.pretrain import pretrain

    cfg, dev = _setup(params)
    sp = _splits(out, cfg)
    info = sp["train"].info
    res = pretrain(cfg.model, info.num_classes, sp["train"], sp["val"], cfg.pretrain, dev)
    save_checkpoint(res.model, out / "base.safetensors", info.class_names,
                    extra={"dataset_version": info.content_hash})
    write_json_atomic(out / "pretrain.json", {"val_acc": res.val_acc, "best_epoch": res.best_epoch,
                                              "seconds": round(res.seconds, 1)})
    typer.echo(f"pretrained: val accuracy {res.val_acc:.3f} in {res.seconds:.0f}s")


@app.command()
def forget(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Train one sparse adapter per configured request, in order; each builds on the last model
    that passed the gates (base + the adapters of the passing steps)."""
    from forgetting.data import reference_class_names
    from forgetting.evaluate import compare
    from forgetting.gates import gate_verdict
    from forgetting.model import load_checkpoint
    from forgetting.requests import validate_request
    from forgetting.train import forget_classes

    cfg, dev = _setup(params)
    sp = _splits(out, cfg)
    model, names, _ = load_checkpoint(out / "base.safetensors")
    model = model.to(dev)
    reference = reference_class_names(out / "dataset.parquet")
    adapters = out / "adapters"
    tmp_root = out / ".adapters.tmp"
    shutil.rmtree(tmp_root, ignore_errors=True)  # this stage's own scratch
    tmp_root.mkdir(parents=True)
    forgotten: list[str] = []  # by the model the next request builds on
    parent_step, depth = 0, 0  # depth: the adapters below the model the next step builds on
    steps, curves = [], []
    for i, r in enumerate(cfg.requests, 1):
        forget_idx = validate_request(names, r.classes, forgotten, reference)
        earlier = [names.index(n) for n in forgotten]
        res = forget_classes(model, sp["train"], sp["val"], forget_idx,
                             cfg.forget.for_request(r.shots, r.method, depth), tmp_root / f"step-{i}",
                             dev, earlier=earlier, adapter_meta={"step": i})
        metrics = compare(model, res.model, sp["test"], forget_idx, earlier, dev, tuple(names))
        gate = gate_verdict(metrics, cfg.gates, forgotten + r.classes)
        steps.append({"step": i, "classes": r.classes, "shots": r.shots, "method": r.method,
                      "parent_step": parent_step, "gate": gate or "passed",
                      "adapter_sha256": res.adapter_sha256, "kept_groups": res.kept_groups,
                      "adapter_bytes": res.adapter_bytes, "selected_epoch": res.selected_epoch,
                      "train_seconds": round(res.train_seconds, 1)})
        curves += [{"step": i, "epoch": h["epoch"], "loss": h["loss"], "ce_r": h["ce_r"],
                    "ce_f": h["ce_f"], **{f"val_{k}": v for k, v in h["val_raw"].items()}}
                   for h in res.history]
        typer.echo(f"step {i} {','.join(r.classes)}: kept groups {res.kept_groups}, "
                   f"{res.train_seconds:.0f}s, gate {gate or 'passed'}")
        if gate is None:
            model, forgotten, parent_step = res.model, forgotten + r.classes, i
            depth += 1
    write_json_atomic(tmp_root / "steps.json", steps)
    if adapters.exists():  # this stage's own output: DVC removes it before a run anyway
        shutil.rmtree(adapters)
    replace_durably(tmp_root, adapters)  # the folder appears whole or not at all
    if curves:
        _write_csv(out / "training.csv", curves)


@app.command("evaluate")
def evaluate_stage(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Test-split metrics after each step (Acc_f, Acc_r, Acc_o, H-Mean, per class), each step
    against the model it built on, and the gate verdict, checked against the forget stage's."""
    from forgetting.evaluate import compare
    from forgetting.gates import gate_verdict
    from forgetting.lora import apply_adapter
    from forgetting.model import load_checkpoint

    cfg, dev = _setup(params)
    test = _splits(out, cfg)["test"]
    base, names, _ = load_checkpoint(out / "base.safetensors")
    models, forgotten = {0: base.to(dev)}, {0: []}
    steps = json.loads((out / "adapters" / "steps.json").read_text())
    results, per_class = [], []
    for s in steps:
        parent, earlier_names = models[s["parent_step"]], forgotten[s["parent_step"]]
        forget = [names.index(c) for c in s["classes"]]
        earlier = [names.index(c) for c in earlier_names]
        model = apply_adapter(parent, out / "adapters" / f"step-{s['step']}",
                              s["adapter_sha256"]).to(dev)
        m = compare(parent, model, test, forget, earlier, dev, tuple(names))
        gate = gate_verdict(m, cfg.gates, earlier_names + s["classes"])
        if (gate or "passed") != s["gate"]:
            raise RuntimeError(f"step {s['step']}: gate {gate or 'passed'!r} here but "
                               f"{s['gate']!r} in the forget stage (not deterministic?)")
        models[s["step"]], forgotten[s["step"]] = model, earlier_names + s["classes"]
        results.append({"step": s["step"], "classes": s["classes"], "acc_f": m["acc_f"],
                        "acc_r": m["acc_r"], "acc_o": m["acc_o"], "h_mean": m["h_mean"],
                        "before_acc_f": m["before_acc_f"], "before_acc_r": m["before_acc_r"],
                        "parent_step": s["parent_step"], "gate_passed": gate is None,
                        "gate": gate or "passed"})
        per_class += [{"step": s["step"], "class": c, "before": m["before_per_class"][c],
                       "after": m["per_class"][c]} for c in names]
    last = results[-1] if results else {}
    passed = [r["step"] for r in results if r["gate_passed"]]
    write_json_atomic(out / "metrics.json", {
        "final": {k: last.get(k) for k in ("acc_f", "acc_r", "acc_o", "h_mean")},
        "production_step": passed[-1] if passed else 0, "steps": results})
    if per_class:
        _write_csv(out / "per_class.csv", per_class)
    for r in results:
        typer.echo(f"step {r['step']} {','.join(r['classes'])} (on step {r['parent_step']}): "
                   f"Acc_f {r['acc_f']:.3f} Acc_r {r['acc_r']:.3f} H {r['h_mean']:.3f} "
                   f"gate {r['gate']}")
