"""What the benchmarks share: the embedded dataset and a base model, cached by config hash."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from forgetting.config import Config, load_config
from forgetting.data import builtin_source, import_source
from forgetting.datasets import ParquetImageDataset, splits
from forgetting.model import load_checkpoint, save_checkpoint
from forgetting.pretrain import pretrain
from forgetting.runtime import setup_runtime

# fields added after results were cached, left out of cache keys while at their default, so
# the models cached before them stay valid
LATER_FIELDS = {"timm_kwargs", "reference_classes"}


def unchanged(m) -> set[str]:
    """``exclude=`` for a config's cache key: its later fields still at their default."""
    return {f for f in LATER_FIELDS if f in type(m).model_fields
            and getattr(m, f) == type(m).model_fields[f].get_default(call_default_factory=True)}


def dataset(cfg: Config, cache: Path) -> tuple[Path, dict[str, ParquetImageDataset]]:
    """``data.source`` imported once (cached by source and split settings), through the
    model's transform."""
    cache.mkdir(parents=True, exist_ok=True)
    name = builtin_source(cfg.data.source) or Path(cfg.data.source).stem
    key = hashlib.sha256(cfg.data.model_dump_json(exclude=unchanged(cfg.data)).encode()
                         ).hexdigest()[:8]
    data = cache / f"{name}-{key}.parquet"
    if not data.exists():
        import_source(cfg.data.source, data, cfg.data, cfg.model.in_chans)
    return data, splits(data, cfg.model)


def base_model(cfg: Config, cache: Path, splits, device: torch.device):
    """(model, checkpoint path, seconds spent pretraining: 0 when cached)."""
    key = hashlib.sha256((cfg.model.model_dump_json(exclude=unchanged(cfg.model))
                          + cfg.pretrain.model_dump_json()
                          + cfg.data.model_dump_json(exclude=unchanged(cfg.data))
                          + f"{cfg.threads}{cfg.deterministic}"
                          ).encode()).hexdigest()[:16]
    path = cache / f"base-{key}.safetensors"
    if path.exists():
        return load_checkpoint(path)[0].to(device), path, 0.0
    res = pretrain(cfg.model, splits["train"].info.num_classes, splits["train"], splits["val"],
                   cfg.pretrain, device)
    save_checkpoint(res.model, path, splits["train"].info.class_names)
    return res.model, path, res.seconds


def common_args(ap: argparse.ArgumentParser) -> None:
    """--json, --config, --cache, --device: the options every benchmark takes."""
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--config", help="YAML config (params.yaml); defaults otherwise")
    ap.add_argument("--cache", default=".forgetting/bench-cache", help="dataset and base model")
    ap.add_argument("--device", default=None, help="overrides the config's device")


def setup(args: argparse.Namespace) -> tuple[Config, torch.device]:
    """The config, with the runtime it asks for (threads, deterministic kernels, device)."""
    cfg = load_config(args.config)
    if args.device:
        cfg = cfg.model_copy(update={"device": args.device})
    return cfg, setup_runtime(cfg)


def sequence_setup(ap: argparse.ArgumentParser, argv: list[str] | None):
    """For the benchmarks that forget one class per step: ``--steps`` and the common options
    parsed, the runtime set up, the dataset loaded, ``--steps`` checked against its classes.
    Returns (args, cfg, device, dataset path, splits)."""
    ap.add_argument("--steps", type=int, default=5, help="requests in a row (one class each)")
    common_args(ap)
    args = ap.parse_args(argv)
    cfg, device = setup(args)
    data, sp = dataset(cfg, Path(args.cache))
    n = sp["train"].info.num_classes
    if not 1 <= args.steps < n:
        ap.error(f"--steps must be 1..{n - 1}")
    return args, cfg, device, data, sp
