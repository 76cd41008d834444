"""Prefect tasks around the library: dataset import, pretraining, the lineage of a model
version, prototypes, GS-LoRA training and evaluation. They pass file paths, not tensors
(Prefect stores parameters as JSON)."""

from __future__ import annotations

import json
import os
import shutil

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch.utils.data import ConcatDataset

from forgetting.data import (
    DataError,
    DatasetInfo,
    ParquetImageDataset,
    import_source,
    read_info,
)
from forgetting.evaluate import evaluate
from forgetting.files import write_json_atomic
from forgetting.lora import apply_adapter
from forgetting.mia import membership_inference
from forgetting.model import (
    CheckpointError,
    Classifier,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from forgetting.pretrain import pretrain, retrain_baseline
from forgetting.prototypes import Prototypes, compute_prototypes
from forgetting.train import forget_classes

from . import registry
from .workspace import Workspace


def splits(ws: Workspace) -> dict[str, ParquetImageDataset]:
    return {s: ParquetImageDataset(ws.dataset, s) for s in ("train", "val", "test")}


@task(cache_policy=NO_CACHE)
def import_dataset(root: str, source: str = "sklearn-digits") -> dict:
    """Import to ``data/dataset.parquet``: the bundled digits, an ImageFolder, or a Parquet file."""
    ws = Workspace.at(root)
    cfg = ws.config()
    staged = ws.work / f"import-{os.getpid()}.parquet"  # checked before it replaces anything
    ws.work.mkdir(parents=True, exist_ok=True)
    try:
        info = import_source(source, staged, cfg.data, cfg.model.in_chans)
        if ws.base_checkpoint.exists():
            _, model_classes, _ = load_checkpoint(ws.base_checkpoint)
            if list(model_classes) != list(info.class_names):
                extra = sorted(set(info.class_names) - set(model_classes))
                missing = sorted(set(model_classes) - set(info.class_names))
                raise DataError(
                    f"dataset {source} does not match the model's classes (new: "
                    f"{extra[:5] or 'none'}, missing: {missing[:5] or 'none'}"
                    f"{', same names in another order' if not extra and not missing else ''})"
                    "; a new class list needs a new workspace")
        ws.dataset.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, ws.dataset)
    finally:
        staged.unlink(missing_ok=True)
    get_run_logger().info(f"dataset {info.num_rows} images, {info.num_classes} classes, "
                          f"version {info.content_hash[:12]}")
    return {"content_hash": info.content_hash, "classes": list(info.class_names)}


@task(cache_policy=NO_CACHE)
def pretrain_base(root: str) -> dict:
    ws = Workspace.at(root)
    cfg = ws.config()
    sp = splits(ws)
    res = pretrain(cfg.model, sp["train"].info.num_classes, sp["train"], sp["val"], cfg.pretrain,
                   resolve_device(cfg.device))
    sha = save_checkpoint(res.model, ws.base_checkpoint, sp["train"].info.class_names,
                          extra={"dataset_version": sp["train"].info.content_hash})
    get_run_logger().info(f"pretrained in {res.seconds:.0f}s, val accuracy {res.val_acc:.3f}")
    return {"sha256": sha, "val_acc": res.val_acc, "seconds": res.seconds,
            "best_epoch": res.best_epoch}


@task(cache_policy=NO_CACHE)
def import_base(root: str, checkpoint: str) -> dict:
    """Use a user's pre-trained checkpoint as the base: safetensors (ours) or a weights-only
    ``.pt`` state dict with the config of ``params.yaml``; its classes must be the dataset's."""
    ws = Workspace.at(root)
    info = dataset_info(ws)
    model, names, _ = load_checkpoint(checkpoint, cfg=ws.config().model,
                                      class_names=list(info.class_names))
    if list(names) != list(info.class_names):
        raise CheckpointError(
            f"checkpoint {checkpoint} classes {names[:5]}... differ from the dataset's "
            f"{list(info.class_names)[:5]}... ({len(names)} vs {info.num_classes} classes)")
    sha = save_checkpoint(model, ws.base_checkpoint, names,
                          extra={"dataset_version": info.content_hash, "imported_from": checkpoint})
    get_run_logger().info(f"imported base model from {checkpoint}")
    return {"sha256": sha}


def model_for_version(ws: Workspace, version: int) -> tuple[Classifier, list[str]]:
    """Base checkpoint + the chain of adapters up to ``version``, each verified by sha256."""
    c = registry.client(ws)
    chain: list[dict[str, str]] = []
    v: int | None = version
    while v is not None:
        tags = registry.version_tags(c, v)
        chain.append(tags)
        v = int(tags["parent_version"]) if tags.get("parent_version") else None
    base_tags = chain.pop()
    model, names, _ = load_checkpoint(ws.root / base_tags["checkpoint"],
                                      expected_sha256=base_tags["checkpoint_sha256"])
    for tags in reversed(chain):
        model = apply_adapter(model, ws.root / tags["adapter"], tags["adapter_sha256"])
    return model.eval(), names


def forgotten_in(ws: Workspace, version: int) -> list[str]:
    return json.loads(registry.version_tags(registry.client(ws), version).get("forgotten", "[]"))


@task(cache_policy=NO_CACHE)
def materialize(root: str, version: int, request_id: str) -> str:
    """The model of ``version`` rebuilt from DVC-tracked files, as a checkpoint in the work dir."""
    ws = Workspace.at(root)
    model, names = model_for_version(ws, version)
    out = ws.work_dir(request_id) / f"parent-v{version}.safetensors"
    save_checkpoint(model, out, names)
    return str(out)


@task(cache_policy=NO_CACHE)
def prototypes(root: str, checkpoint: str, request_id: str, forget: list[int], earlier: list[int],
               shots: int | None) -> str:
    """GS-LoRA++ prototypes of the current model over the images this request may use."""
    from forgetting.data import k_shot

    ws = Workspace.at(root)
    cfg = ws.config().forget
    model, names, _ = load_checkpoint(checkpoint)
    train = splits(ws)["train"]
    retained = sorted(set(range(len(names))) - set(forget) - set(earlier))
    f, r = train.with_classes(forget), train.with_classes(retained)
    if shots is not None:  # the same seeded draw as training uses
        f, r = k_shot(f, shots, cfg.seed, forget), k_shot(r, shots, cfg.seed + 1, retained)
    dev = resolve_device(ws.config().device)
    protos = compute_prototypes(model.to(dev), torch.utils.data.ConcatDataset([f, r]), len(names),
                                dev, cfg.prototypes.source)
    out = ws.work_dir(request_id) / "prototypes.safetensors"
    protos.save(out)
    return str(out)


@task(cache_policy=NO_CACHE)
def train_adapter(root: str, checkpoint: str, request_id: str, forget: list[int],
                  earlier: list[int], shots: int | None, method: str,
                  prototypes_path: str | None) -> dict:
    """Train and store ``data/adapters/<request>``; an adapter already stored for this request
    (a retried run) is kept, not trained again."""
    ws = Workspace.at(root)
    out = ws.adapter_dir(request_id)
    summary_path = ws.work_dir(request_id) / "train.json"
    if (out / "forgetting.json").is_file() and summary_path.is_file():
        get_run_logger().info(f"adapter for {request_id} already stored; not retraining")
        return json.loads(summary_path.read_text())
    shutil.rmtree(out, ignore_errors=True)  # a partial folder can only come from a crash
    cfg = ws.config()
    fcfg = cfg.forget.for_request(shots, method)
    model, _, _ = load_checkpoint(checkpoint)
    sp = splits(ws)
    dev = resolve_device(cfg.device)
    protos = Prototypes.load(prototypes_path) if prototypes_path else None
    res = forget_classes(model, sp["train"], sp["val"], forget, fcfg, out, dev, earlier=earlier,
                         adapter_meta={"request_id": request_id}, prototypes=protos)
    summary = {"adapter_sha256": res.adapter_sha256, "kept_groups": res.kept_groups,
               "group_norms": res.group_norms, "selected_epoch": res.selected_epoch,
               "selected_weights": res.selected_weights, "train_seconds": res.train_seconds,
               "trainable_params": res.trainable_params, "total_params": res.total_params,
               "adapter_bytes": res.adapter_bytes, "model_bytes": res.model_bytes,
               "val": res.val.as_dict(), "history": res.history}
    write_json_atomic(summary_path, summary)
    get_run_logger().info(f"{request_id}: kept groups {res.kept_groups} of "
                          f"{len(res.group_norms)}, {res.train_seconds:.1f}s")
    return summary


@task(cache_policy=NO_CACHE)
def evaluate_request(root: str, checkpoint: str, request_id: str, forget: list[int],
                     earlier: list[int], adapter_sha256: str) -> dict:
    """Test-split metrics before (parent) and after (parent + stored adapter)."""
    ws = Workspace.at(root)
    parent, names, _ = load_checkpoint(checkpoint)
    dev = resolve_device(ws.config().device)
    test = splits(ws)["test"]
    before = evaluate(parent.to(dev), test, forget, earlier, device=dev, class_names=tuple(names))
    after_model = apply_adapter(parent, ws.adapter_dir(request_id), adapter_sha256).to(dev)
    after = evaluate(after_model, test, forget, earlier, acc_f_before=before.acc_f, device=dev,
                     class_names=tuple(names))
    metrics = {**after.as_dict(), **before.as_dict("before_")}
    if ws.config().evidence.membership_inference:
        sp = splits(ws)
        heldout = ConcatDataset([sp["val"], test])
        for prefix, m in (("before_", parent), ("", after_model)):
            mia = membership_inference(m, sp["train"], heldout, forget, dev, earlier=earlier)
            metrics.update(mia.as_dict(f"{prefix}mia_"))
    write_json_atomic(ws.work_dir(request_id) / "metrics.json", metrics)
    return metrics


@task(cache_policy=NO_CACHE)
def retrain_reference(root: str, request_id: str, forget: list[int], earlier: list[int]) -> dict:
    """The gold standard for this request: a model trained from scratch without every class
    forgotten so far. Kept in the work dir, so a retried request does not retrain."""
    ws = Workspace.at(root)
    path = ws.work_dir(request_id) / "retrain.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = ws.config()
    sp = splits(ws)
    dev = resolve_device(cfg.device)
    names = sp["train"].info.class_names
    gone = set(forget) | set(earlier)
    res = retrain_baseline(cfg.model, len(names), sp["train"], sp["val"], cfg.pretrain, dev,
                           [c for c in range(len(names)) if c not in gone])
    m = evaluate(res.model, sp["test"], forget, earlier, device=dev, class_names=tuple(names))
    out = {**m.as_dict(), "seconds": res.seconds}
    if cfg.evidence.membership_inference:
        out.update(membership_inference(res.model, sp["train"],
                                        ConcatDataset([sp["val"], sp["test"]]), forget, dev,
                                        earlier=earlier).as_dict("mia_"))
    write_json_atomic(path, out)
    get_run_logger().info(f"{request_id}: retrained from scratch in {res.seconds:.0f}s, "
                          f"Acc_r {m.acc_r:.3f}")
    return out


def dataset_info(ws: Workspace) -> DatasetInfo:
    return read_info(ws.dataset)
