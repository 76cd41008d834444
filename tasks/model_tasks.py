"""Prefect tasks around the library: dataset import, pretraining, the lineage of a model
version, prototypes, GS-LoRA training and evaluation. They pass file paths, not tensors
(Prefect stores parameters as JSON)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch.utils.data import ConcatDataset

from forgetting.config import ModelConfig
from forgetting.data import DatasetInfo, read_info, reference_class_names
from forgetting.datasets import ParquetImageDataset, request_data, splits
from forgetting.evaluate import class_accuracy, compare, evaluate
from forgetting.files import fsync_tree, replace_durably, write_json_atomic
from forgetting.lora import apply_adapter, apply_chain
from forgetting.mia import membership_inference
from forgetting.model import (
    CheckpointError,
    Classifier,
    file_sha256,
    is_our_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from forgetting.preprocess import data_config, describe_preprocessing, input_shape
from forgetting.pretrain import pretrain, retrain_baseline
from forgetting.prototypes import Prototypes, request_prototypes
from forgetting.runtime import setup_runtime
from forgetting.timm_checkpoint import import_timm, read_class_names
from forgetting.train import forget_classes

from . import registry
from .contracts import TrainingSummary
from .evidence import measure_model, partition_reference
from .workspace import Workspace

TRAINING_SUMMARY = "training.json"  # stored in the adapter folder, next to the weights


def workspace_splits(ws: Workspace) -> dict[str, ParquetImageDataset]:
    return splits(ws.dataset, ws.config().model)


def dataset_info(ws: Workspace) -> DatasetInfo:
    return read_info(ws.dataset)


@task(cache_policy=NO_CACHE)
def pretrain_base(root: str) -> dict:
    ws = Workspace.at(root)
    cfg = ws.config()
    dev = setup_runtime(cfg)
    sp = workspace_splits(ws)
    res = pretrain(cfg.model, sp["train"].info.num_classes, sp["train"], sp["val"], cfg.pretrain,
                   dev)
    sha = save_checkpoint(res.model, ws.base_checkpoint, sp["train"].info.class_names,
                          extra={"dataset_version": sp["train"].info.content_hash})
    acc, per_class = class_accuracy(res.model, sp["val"], dev, sp["train"].info.class_names)
    write_json_atomic(base_report_path(ws), {
        "origin": "pretrained here", "val_acc": acc, "val_class_acc": per_class,
        "val_images": len(sp["val"]), "import": None,
        "preprocessing": describe_preprocessing(cfg.model, sp["train"].info.image_size)})
    get_run_logger().info(f"pretrained in {res.seconds:.0f}s, val accuracy {res.val_acc:.3f}")
    return {"sha256": sha, "val_acc": res.val_acc, "seconds": res.seconds,
            "best_epoch": res.best_epoch}


BASE_REPORT = "base.json"  # beside the base checkpoint: its val accuracy and preprocessing


def base_report_path(ws: Workspace):
    return ws.base_checkpoint.parent / BASE_REPORT


@task(cache_policy=NO_CACHE)
def import_base(root: str, checkpoint: str, arch: str | None = None,
                class_names_file: str | None = None, margin: str = "cosface",
                num_heads: int | None = None, global_pool: str | None = None,
                model_args: dict | None = None, min_val_accuracy: float | None = None,
                accept: bool = False) -> dict:
    """Use a user's pre-trained model as the base: one of our checkpoints, or a plain timm
    state dict (safetensors, weights-only ``.pt``, timm ``train.py`` checkpoint) whose
    settings come from its weights, its own config, the flags or its architecture, each
    named (``forgetting.timm_checkpoint``). It must then classify the validation split above
    ``min_val_accuracy`` (default: twice chance) unless ``accept``. Its model config is
    written to params.yaml, so the retrain reference and ``dvc repro`` build the same
    network; its classes must be the dataset's."""
    ws = Workspace.at(root)
    info = dataset_info(ws)
    names = list(info.class_names)
    log = get_run_logger()
    report = None
    never_seen = reference_class_names(ws.dataset)
    if is_our_checkpoint(checkpoint):
        model, got, extra = load_checkpoint(checkpoint)
        if got != names:
            raise CheckpointError(
                f"checkpoint {checkpoint} classes {got[:5]}... differ from the dataset's "
                f"{names[:5]}... ({len(got)} vs {len(names)} classes)")
        if never_seen and extra.get("dataset_version") != info.content_hash:
            raise CheckpointError(
                f"checkpoint {checkpoint} was trained on another dataset version, which may "
                f"hold the never-seen reference classes ({', '.join(never_seen[:5])}): only a "
                "model pretrained on this one is known never to have seen them")
    else:
        order = read_class_names(class_names_file) if class_names_file else None
        model, report = import_timm(checkpoint, names, arch, order, margin, num_heads,
                                    ws.config().model, global_pool, model_args, never_seen)
        for line in report.lines():
            log.info(line)
    if model.cfg.in_chans != info.channels:
        raise CheckpointError(
            f"the model takes {model.cfg.in_chans}-channel images, the dataset holds "
            f"{info.channels}-channel ones: ingest again with model.in_chans "
            f"{model.cfg.in_chans} in params.yaml")
    cfg = ws.config()
    dev = setup_runtime(cfg)
    val = splits(ws.dataset, model.cfg)["val"]
    acc, per_class = class_accuracy(model.to(dev), val, dev, tuple(names))
    bar = min_val_accuracy if min_val_accuracy is not None else 2 / len(names)
    shown = ", ".join(f"{c} {a:.3f}" for c, a in per_class.items())
    log.info(f"validation accuracy of the imported model: {acc:.4f} ({len(val)} images); "
             f"per class: {shown}")
    if acc < bar and not accept:
        why = ("--min-val-accuracy" if min_val_accuracy is not None
               else f"twice chance for {len(names)} classes")
        raise CheckpointError(
            f"the imported model classifies the validation split at {acc:.1%} ({len(val)} "
            f"images), under {bar:.1%} ({why}): its settings or class order are likely "
            "wrong (see the settings above); --accept imports it anyway")
    cfg, params = ws.params_with({"model": model.cfg.model_dump(mode="json")})
    sha = save_checkpoint(model, ws.base_checkpoint, names,
                          extra={"dataset_version": info.content_hash,
                                 "imported_from": Path(checkpoint).name})
    write_json_atomic(base_report_path(ws), {
        "origin": f"imported from {Path(checkpoint).name}", "val_acc": acc,
        "val_class_acc": per_class, "val_images": len(val), "min_val_accuracy": bar,
        "accepted_below": acc < bar, "import": report.as_dict() if report else None,
        "preprocessing": describe_preprocessing(model.cfg, info.image_size)})
    ws.write_params(params)
    log.info(f"imported base model from {checkpoint}: timm {cfg.model.arch}, "
             f"{cfg.model.depth} blocks, width {cfg.model.embed_dim}, "
             f"{cfg.model.image_size} px, {cfg.model.head} head; model config written to "
             "params.yaml")
    return {"sha256": sha, "val_acc": acc}


def model_for_version(ws: Workspace, version: int) -> tuple[Classifier, list[str]]:
    """Base checkpoint + the chain of adapters up to ``version``, each verified by sha256."""
    chain = [tags for _, tags in registry.chain(registry.client(ws), version)]
    model, names = _base_checkpoint(ws, chain.pop())
    model = apply_chain(model, [(ws.root / t["adapter"], t["adapter_sha256"])
                                for t in reversed(chain)])
    return model.eval(), names


def base_under(ws: Workspace, version: int) -> Classifier | None:
    """The base model ``version`` was built on (verified by sha256); None when ``version`` is
    that base itself."""
    chain = [tags for _, tags in registry.chain(registry.client(ws), version)]
    return _base_checkpoint(ws, chain[-1])[0].eval() if len(chain) > 1 else None


def _base_checkpoint(ws: Workspace, tags: dict[str, str]) -> tuple[Classifier, list[str]]:
    model, names, _ = load_checkpoint(ws.root / tags["checkpoint"],
                                      expected_sha256=tags["checkpoint_sha256"])
    return model, names


@task(cache_policy=NO_CACHE)
def materialize(root: str, version: int, request_id: str) -> str:
    """The model of ``version`` rebuilt from DVC-tracked files, as a checkpoint in the work dir."""
    ws = Workspace.at(root)
    model, names = model_for_version(ws, version)
    out = ws.work_dir(request_id) / f"parent-v{version}.safetensors"
    save_checkpoint(model, out, names)
    return str(out)


def _retained(num_classes: int, forget: list[int], earlier: list[int]) -> list[int]:
    return sorted(set(range(num_classes)) - set(forget) - set(earlier))


@task(cache_policy=NO_CACHE)
def prototypes(root: str, checkpoint: str, request_id: str, forget: list[int], earlier: list[int],
               shots: int | None) -> str:
    """GS-LoRA++ prototypes of the current model over the images this request may use (the
    same draw as its training: ``request_data``)."""
    ws = Workspace.at(root)
    cfg = ws.config()
    dev = setup_runtime(cfg)
    model, names, _ = load_checkpoint(checkpoint)
    data = request_data(workspace_splits(ws)["train"], forget,
                        _retained(len(names), forget, earlier), [], shots, cfg.forget.seed,
                        cfg.forget.for_request(shots).replay)
    protos = request_prototypes(model.to(dev), data.forget, data.retained, len(names), dev,
                                cfg.forget.prototypes, shots is not None, cfg.forget.seed)
    out = ws.work_dir(request_id) / "prototypes.safetensors"
    protos.save(out)
    return str(out)


def stored_training(ws: Workspace, request_id: str) -> TrainingSummary | None:
    """The training summary of an adapter already stored for this request (a retried run)."""
    p = ws.adapter_dir(request_id) / TRAINING_SUMMARY
    return TrainingSummary.model_validate_json(p.read_text()) if p.is_file() else None


@task(cache_policy=NO_CACHE)
def train_adapter(root: str, checkpoint: str, request_id: str, forget: list[int],
                  earlier: list[int], shots: int | None, method: str,
                  prototypes_path: str | None, index: int = 0,
                  parent_version: int | None = None) -> TrainingSummary:
    """Train and store ``data/adapters/<request>`` with its training summary in one rename, so
    "already trained" is read from the DVC-tracked folder itself: a retried run keeps it
    (and its sha256, which may already be registered) even when the scratch dir is gone.
    ``parent_version``: the registered version ``checkpoint`` was built from, whose base
    ``forget.embedding.anchor: base`` holds the retained embedding to."""
    ws = Workspace.at(root)
    out = ws.adapter_dir(request_id)
    if (stored := stored_training(ws, request_id)) is not None:
        get_run_logger().info(f"adapter for {request_id} already stored; not retraining")
        return stored
    cfg = ws.config()
    dev = setup_runtime(cfg)
    fcfg = cfg.forget.for_request(shots, method, index)
    model, _, _ = load_checkpoint(checkpoint)
    sp = workspace_splits(ws)
    protos = Prototypes.load(prototypes_path) if prototypes_path else None
    base = (base_under(ws, parent_version)
            if fcfg.embedding.anchor == "base" and parent_version is not None else None)
    staging = ws.work_dir(request_id) / "adapter"
    shutil.rmtree(staging, ignore_errors=True)  # a partial staging folder is from a crash
    res = forget_classes(model, sp["train"], sp["val"], forget, fcfg, staging, dev,
                         earlier=earlier, adapter_meta={"request_id": request_id},
                         prototypes=protos, base=base)
    summary = TrainingSummary(
        adapter_sha256=res.adapter_sha256, kept_groups=res.kept_groups,
        group_norms=res.group_norms, selected_epoch=res.selected_epoch,
        selected_weights=res.selected_weights, train_seconds=res.train_seconds,
        trainable_params=res.trainable_params, total_params=res.total_params,
        adapter_bytes=res.adapter_bytes, model_bytes=res.model_bytes, val=res.val.as_dict(),
        history=res.history, method=fcfg.method, **res.method_record)
    write_json_atomic(staging / TRAINING_SUMMARY, summary.model_dump(mode="json"))
    fsync_tree(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # a folder without the summary: an adapter folder of an older version
        raise CheckpointError(f"{ws.rel(out)} exists but has no {TRAINING_SUMMARY}; move it "
                              "away to retrain this request")
    replace_durably(staging, out)
    get_run_logger().info(f"{request_id}: kept groups {res.kept_groups} of "
                          f"{len(res.group_norms)}, {res.train_seconds:.1f}s")
    return summary


@task(cache_policy=NO_CACHE)
def evaluate_request(root: str, checkpoint: str, request_id: str, forget: list[int],
                     earlier: list[int], adapter_sha256: str) -> dict:
    """Test-split metrics before (parent) and after (parent + stored adapter), and the
    membership-inference figures and evidence attacks (``tasks.evidence``) of both."""
    ws = Workspace.at(root)
    cfg = ws.config()
    dev = setup_runtime(cfg)
    parent, names, _ = load_checkpoint(checkpoint)
    sp = workspace_splits(ws)
    after_model = apply_adapter(parent, ws.adapter_dir(request_id), adapter_sha256).to(dev)
    metrics = compare(parent.to(dev), after_model, sp["test"], forget, earlier, dev, tuple(names))
    if cfg.evidence.membership_inference:
        heldout = ConcatDataset([sp["val"], sp["test"]])
        for prefix, m in (("before_", parent), ("", after_model)):
            mia = membership_inference(m, sp["train"], heldout, forget, dev, earlier=earlier)
            metrics.update(mia.as_dict(f"{prefix}mia_"))
    version = read_info(ws.dataset).content_hash
    if cfg.evidence.attacks:  # the original model's figures: what the attacks find unforgotten
        metrics["evidence"] = {
            who: measure_model(ws, m, sp, forget, earlier, version, dev)
            for who, m in (("original", parent.to(dev)), ("after", after_model))}
        if cfg.evidence_reference == "partition":
            metrics["evidence"]["partition"] = partition_reference(ws, sp, forget, earlier,
                                                                   version, dev)
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
    dev = setup_runtime(cfg)
    sp = workspace_splits(ws)
    names = sp["train"].info.class_names
    res = retrain_baseline(cfg.model, len(names), sp["train"], sp["val"], cfg.pretrain, dev,
                           _retained(len(names), forget, earlier))
    m = evaluate(res.model, sp["test"], forget, earlier, device=dev, class_names=tuple(names))
    out = {**m.as_dict(), "seconds": res.seconds}
    if cfg.evidence.membership_inference:
        out.update(membership_inference(res.model, sp["train"],
                                        ConcatDataset([sp["val"], sp["test"]]), forget, dev,
                                        earlier=earlier).as_dict("mia_"))
    if cfg.evidence.attacks:
        out["evidence"] = measure_model(ws, res.model, sp, forget, earlier,
                                        read_info(ws.dataset).content_hash, dev)
    write_json_atomic(path, out)
    get_run_logger().info(f"{request_id}: retrained from scratch in {res.seconds:.0f}s, "
                          f"Acc_r {m.acc_r:.3f}")
    return out


@task(cache_policy=NO_CACHE)
def register_base(root: str, pretrained: dict) -> int:
    """The base checkpoint as version 1 of the registered model (found again after a crash)."""
    ws = Workspace.at(root)
    c = registry.client(ws)
    version = registry.version_for_request(c, "base")
    if version is not None:
        return version
    cfg = ws.config()
    info = dataset_info(ws)
    tags = {"checkpoint": ws.rel(ws.base_checkpoint),
            "checkpoint_sha256": file_sha256(ws.base_checkpoint),
            "dataset_version": info.content_hash, "forgotten": "[]"}
    report = base_report_path(ws)
    base = json.loads(report.read_text()) if report.is_file() else {}
    metrics = {k: v for k, v in pretrained.items() if isinstance(v, float)}
    if base:  # its val accuracy, overall and per class (what `forget status` shows too)
        metrics["val_acc"] = base["val_acc"]
        metrics.update({f"val_class_acc/{k}": v for k, v in base["val_class_acc"].items()})
    kind = "import" if base.get("import") or "imported" in base.get("origin", "") else "pretrain"
    run_id = registry.log_request_run(
        ws, "base", {"kind": kind, **cfg.pretrain.model_dump()}, metrics,
        [report] if base else [], ws.base_checkpoint, tags["checkpoint_sha256"], [],
        input_shape(cfg.model), model_metadata(cfg.model))
    return registry.register(ws, "base", run_id, ws.base_checkpoint, tags)


def model_metadata(cfg: ModelConfig) -> dict:
    """What a user of the MLflow model needs to feed it: the preprocessing of its inputs."""
    return {"data_config": data_config(cfg), "timm_arch": cfg.arch}


def export_production(ws: Workspace, version: int) -> str | None:
    """One full merged checkpoint, for the version that is now production (a standalone file
    for deployments without this package); the previous production's export is deleted, so
    the registry holds one. None for the base, a full model itself. Call under the run lock."""
    c = registry.client(ws)
    for v in registry.merged_versions(c):
        if v != version:
            registry.drop_merged(c, v)
    tags = registry.version_tags(c, version)
    if tags.get("merged_uri") or not tags.get("parent_version"):
        return tags.get("merged_uri")
    model, names = model_for_version(ws, version)
    out = ws.work_dir(f"export-v{version}") / "merged.safetensors"
    sha = save_checkpoint(model, out, names)
    uri = registry.store_merged(c, version, out, sha)
    shutil.rmtree(out.parent)
    return uri


def backfill_parts(ws: Workspace, version: int) -> None:
    """Versions registered before each version stored its own part (no ``part_uri``) get it
    from the DVC-tracked files, verified by sha256, so a child's lineage reaches the base."""
    c = registry.client(ws)
    for v, tags in registry.chain(c, version):
        if tags.get("part_uri"):
            continue
        if tags.get("parent_version"):
            path = ws.root / tags["adapter"]
            ok = file_sha256(path / "adapter_model.safetensors") == tags["adapter_sha256"]
        else:
            path = ws.root / tags["checkpoint"]
            ok = file_sha256(path) == tags["checkpoint_sha256"]
        if not ok:
            raise CheckpointError(f"{ws.rel(path)} does not match v{v}'s recorded sha256")
        registry.store_part(c, v, path)


@task(cache_policy=NO_CACHE, name="export_production")
def export_production_task(root: str, version: int) -> str | None:
    ws = Workspace.at(root)
    return registry.with_backoff(lambda: export_production(ws, version),
                                 "exporting the production model")
