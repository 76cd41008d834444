"""The stages of ``dvc.yaml``: prepare -> pretrain -> forget -> evaluate.

DVC is the orchestrator here, so these call the library directly (no Prefect, no MLflow):
``dvc repro`` reruns a stage only when its code, params (``params.yaml``) or inputs change.
Everything is written under ``data/repro/`` (a path cannot be both a stage output and the
``dvc add``-ed dataset of the request pipeline), each file to a temp path and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from forgetting.files import write_json_atomic, write_text_atomic

app = typer.Typer(help="Stages run by `dvc repro` (see dvc.yaml).", no_args_is_help=True)
Params = Annotated[Path, typer.Option(help="params.yaml")]
Out = Annotated[Path, typer.Option(help="output folder")]


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _setup(params: Path):
    from forgetting.config import load_config
    from forgetting.model import resolve_device

    cfg = load_config(params if params.exists() else None)
    return cfg, resolve_device(cfg.device)


def _splits(out: Path):
    from forgetting.data import ParquetImageDataset

    return {s: ParquetImageDataset(out / "dataset.parquet", s) for s in ("train", "val", "test")}


@app.command()
def prepare(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Import the configured dataset (default: the bundled digits) to Parquet."""
    from forgetting.data import import_source

    cfg, _ = _setup(params)
    dst = out / "dataset.parquet"
    info = import_source(cfg.data.source, dst, cfg.data, cfg.model.in_chans)
    typer.echo(f"{dst}: {info.num_rows} images, {info.num_classes} classes, "
               f"version {info.content_hash[:12]}")


@app.command("pretrain")
def pretrain_stage(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Pretrain the base ViT on every class."""
    from forgetting.model import save_checkpoint
    from forgetting.pretrain import pretrain

    cfg, dev = _setup(params)
    sp = _splits(out)
    info = sp["train"].info
    res = pretrain(cfg.model, info.num_classes, sp["train"], sp["val"], cfg.pretrain, dev)
    save_checkpoint(res.model, out / "base.safetensors", info.class_names,
                    extra={"dataset_version": info.content_hash})
    write_json_atomic(out / "pretrain.json", {"val_acc": res.val_acc, "best_epoch": res.best_epoch,
                                              "seconds": round(res.seconds, 1)})
    typer.echo(f"pretrained: val accuracy {res.val_acc:.3f} in {res.seconds:.0f}s")


@app.command()
def forget(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Train one sparse adapter per configured request, in order, each on the model left by
    the previous ones (base + adapter chain)."""
    from forgetting.model import load_checkpoint
    from forgetting.train import forget_classes, validate_request

    cfg, dev = _setup(params)
    sp = _splits(out)
    model, names, _ = load_checkpoint(out / "base.safetensors")
    adapters = out / "adapters"
    tmp_root = out / ".adapters.tmp"
    shutil.rmtree(tmp_root, ignore_errors=True)
    tmp_root.mkdir(parents=True)
    earlier_names: list[str] = []
    steps, curves = [], []
    for i, r in enumerate(cfg.requests, 1):
        forget_idx = validate_request(names, r.classes, earlier_names)
        earlier = [names.index(n) for n in earlier_names]
        res = forget_classes(model, sp["train"], sp["val"], forget_idx,
                             cfg.forget.for_request(r.shots, r.method), tmp_root / f"step-{i}",
                             dev, earlier=earlier, adapter_meta={"step": i})
        steps.append({"step": i, "classes": r.classes, "shots": r.shots, "method": r.method,
                      "adapter_sha256": res.adapter_sha256, "kept_groups": res.kept_groups,
                      "adapter_bytes": res.adapter_bytes, "selected_epoch": res.selected_epoch,
                      "train_seconds": round(res.train_seconds, 1)})
        curves += [{"step": i, "epoch": h["epoch"], "loss": h["loss"], "ce_r": h["ce_r"],
                    "ce_f": h["ce_f"], **{f"val_{k}": v for k, v in h["val_raw"].items()}}
                   for h in res.history]
        typer.echo(f"step {i} {','.join(r.classes)}: kept groups {res.kept_groups}, "
                   f"{res.train_seconds:.0f}s")
        model, earlier_names = res.model, earlier_names + r.classes
    write_json_atomic(tmp_root / "steps.json", steps)
    shutil.rmtree(adapters, ignore_errors=True)
    os.replace(tmp_root, adapters)  # the folder appears whole or not at all
    if curves:
        _write_csv(out / "training.csv", curves)


@app.command("evaluate")
def evaluate_stage(params: Params = Path("params.yaml"), out: Out = Path("data/repro")) -> None:
    """Test-split metrics after each step (Acc_f, Acc_r, Acc_o, H-Mean, per class) and the
    gate verdict the request pipeline would give."""
    from forgetting.evaluate import evaluate
    from forgetting.lora import apply_adapter
    from forgetting.model import load_checkpoint

    cfg, dev = _setup(params)
    test = _splits(out)["test"]
    model, names, _ = load_checkpoint(out / "base.safetensors")
    model = model.to(dev)
    steps = json.loads((out / "adapters" / "steps.json").read_text())
    earlier: list[int] = []
    results, per_class = [], []
    for s in steps:
        forget = [names.index(c) for c in s["classes"]]
        before = evaluate(model, test, forget, earlier, device=dev, class_names=tuple(names))
        model = apply_adapter(model, out / "adapters" / f"step-{s['step']}",
                              s["adapter_sha256"]).to(dev)
        after = evaluate(model, test, forget, earlier, acc_f_before=before.acc_f, device=dev,
                         class_names=tuple(names))
        drop = before.acc_r - after.acc_r
        gate = after.acc_f <= cfg.gates.max_acc_f and drop <= cfg.gates.max_acc_r_drop
        results.append({"step": s["step"], "classes": s["classes"], "acc_f": after.acc_f,
                        "acc_r": after.acc_r, "acc_o": after.acc_o, "h_mean": after.h_mean,
                        "before_acc_f": before.acc_f, "before_acc_r": before.acc_r,
                        "gate_passed": gate})
        per_class += [{"step": s["step"], "class": c, "before": before.per_class[c],
                       "after": after.per_class[c]} for c in names]
        earlier += forget
    last = results[-1] if results else {}
    write_json_atomic(out / "metrics.json", {"final": {k: last.get(k) for k in (
        "acc_f", "acc_r", "acc_o", "h_mean")}, "steps": results})
    if per_class:
        _write_csv(out / "per_class.csv", per_class)
    for r in results:
        typer.echo(f"step {r['step']} {','.join(r['classes'])}: Acc_f {r['acc_f']:.3f} "
                   f"Acc_r {r['acc_r']:.3f} H {r['h_mean']:.3f} "
                   f"gate {'passed' if r['gate_passed'] else 'failed'}")
