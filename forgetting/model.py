"""timm ViT backbones with linear or margin (CosFace / ArcFace) heads, and safe checkpoints."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .files import write_atomic

META_KEY = "forgetting"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe or for another model."""


class LinearHead(nn.Linear):
    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class CosineMarginHead(nn.Module):
    """Cosine classifier; with labels in training mode it applies the CosFace or ArcFace margin.

    At inference (or without labels) it is a plain scaled-cosine classifier: the research
    code applied the margin at test time too, which lowers the true class's score.
    """

    def __init__(self, dim: int, num_classes: int, kind: str, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.02)
        self.kind, self.scale, self.margin = kind, scale, margin

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))
        if labels is None or not self.training or self.margin == 0:
            return self.scale * cos
        onehot = F.one_hot(labels, cos.shape[-1]).bool()
        if self.kind == "cosface":
            target = cos - self.margin
        else:  # arcface: cos(theta + m), kept monotonic past pi - m as in insightface
            theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
            target = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                 cos - self.margin * math.sin(self.margin))
        return self.scale * torch.where(onehot, target, cos)


class Classifier(nn.Module):
    """``backbone`` (timm ViT, no head) + ``head``; ``embed`` is the LayerNorm'd CLS feature."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = timm.create_model(
            cfg.arch, pretrained=False, num_classes=0, img_size=cfg.image_size,
            patch_size=cfg.patch_size, in_chans=cfg.in_chans, depth=cfg.depth,
            embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            global_pool=cfg.global_pool, **cfg.timm_kwargs,
        )
        dim = self.backbone.num_features
        self.head: nn.Module = (
            LinearHead(dim, num_classes) if cfg.head == "linear"
            else CosineMarginHead(dim, num_classes, cfg.head, cfg.head_scale, cfg.head_margin)
        )

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone(x), labels)


def create_model(cfg: ModelConfig, num_classes: int) -> Classifier:
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    return Classifier(cfg, num_classes)


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: Classifier, path: str | Path, class_names: list[str] | tuple[str, ...],
                    extra: dict | None = None) -> str:
    """safetensors weights + config/class names in its metadata; atomic; returns sha256.

    The metadata is one key holding sorted JSON: safetensors writes its metadata map in hash
    order, which differs between processes, so several keys made the same checkpoint come out
    as different bytes (measured: the request pipeline's and ``dvc repro``'s base models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {META_KEY: json.dumps({"model_config": model.cfg.model_dump(mode="json"),
                                  "class_names": list(class_names), "extra": extra or {}},
                                 sort_keys=True)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=meta))
    return file_sha256(path)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, facts) from a safetensors file or a weights-only torch file.

    ``facts`` holds what the file says about itself: ``arch`` (timm train.py checkpoints),
    and our own metadata if it is one of ours. Nothing is unpickled beyond tensors, plain
    containers and argparse.Namespace (timm train.py stores its ``args`` as one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    facts: dict = {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from e
        facts["metadata"] = meta
        if META_KEY in meta:
            facts["ours"] = json.loads(meta[META_KEY])
        if "arch" in meta:
            facts["arch"] = meta["arch"]
        return state, facts
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError for truncation, ...
        raise CheckpointError(
            f"checkpoint {path} refused: only safetensors or weights-only torch files load "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        if isinstance(obj.get("arch"), str):
            facts["arch"] = obj["arch"]
        if isinstance(obj.get("args"), argparse.Namespace):  # timm train.py's settings
            facts["args"] = vars(obj["args"])
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj, facts


def is_our_checkpoint(path: str | Path) -> bool:
    """A safetensors file written by ``save_checkpoint`` (its config in the metadata), read
    from the header alone: a 330 MB file is not loaded to tell."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return False
    return META_KEY in meta or "model_config" in meta


def load_checkpoint(path: str | Path, expected_sha256: str | None = None,
                    cfg: ModelConfig | None = None, class_names: list[str] | None = None,
                    ) -> tuple[Classifier, list[str], dict]:
    """Load our safetensors checkpoint, or a ``.pt`` state dict of our keys with weights_only.

    A ``.pt`` file carries no config, so ``cfg`` and ``class_names`` must be given for it (a
    plain timm checkpoint goes through ``forgetting.timm_checkpoint`` instead).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"checkpoint {path} does not match its recorded sha256")
    state, facts = read_state_dict(path)
    extra: dict = {}
    meta = facts.get("metadata", {})
    if "ours" in facts:
        m = facts["ours"]
        cfg, class_names = ModelConfig.model_validate(m["model_config"]), m["class_names"]
        extra = m["extra"]
    elif "model_config" in meta:  # written before the one-key layout
        cfg = ModelConfig.model_validate_json(meta["model_config"])
        class_names = json.loads(meta["class_names"])
        extra = json.loads(meta.get("extra", "{}"))
    if cfg is None or class_names is None:
        raise CheckpointError(f"checkpoint {path} has no model config; pass cfg and class_names")
    model = create_model(cfg, len(class_names))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {str(e)[:300]}") from e
    return model, list(class_names), extra
