"""Import a model trained with plain timm: its state dict, architecture and class order.

A user arrives with ``timm.create_model(name, num_classes=N)`` weights (``blocks.0.…``,
``head.weight``), saved with safetensors or ``torch.save`` (a bare state dict or a timm
``train.py`` checkpoint holding ``state_dict`` and ``arch``). The shape of the network is read
from the weights (depth, width, patch, image size, MLP ratio, head); what weights cannot tell
(the number of heads, pooling, normalisation) comes from the timm architecture of that name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import timm
import torch

from .config import ModelConfig
from .model import CheckpointError, Classifier, create_model, read_state_dict
from .preprocess import data_config

VIT_FAMILIES = ("vit_", "deit_", "deit3_")
PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, wrappers, torch.compile


def to_our_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys -> ours: ``backbone.`` before everything but the classifier ``head``."""
    out = {}
    for k, v in state.items():
        for p in PREFIXES:
            k = k.removeprefix(p)
        if not (k.startswith("backbone.") or k.startswith("head.")):
            k = "backbone." + k
        out[k] = v
    return out


def _arch_module(arch: str) -> torch.nn.Module:
    """The timm architecture at its default size, on the meta device (no memory, no weights)."""
    if not arch.startswith(VIT_FAMILIES):
        raise CheckpointError(f"architecture {arch!r} is not a timm ViT (vit_*, deit_*): "
                              "GS-LoRA adapts the FFN layers of ViT blocks")
    if arch not in timm.list_models():
        raise CheckpointError(f"unknown timm architecture {arch!r} (timm {timm.__version__}); "
                              "see timm.list_models('vit_*')")
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, num_classes=0)


def infer_config(state: dict[str, torch.Tensor], arch: str, margin: str = "cosface",
                 num_heads: int | None = None, base: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig of these weights (our key names): sizes from the tensors, the rest
    from the architecture, preprocessing from its timm pretrained_cfg.

    Weights do not tell the number of attention heads: the arch's, or for another width
    timm's convention of 64-wide heads, unless ``num_heads`` is given. ``margin``: the kind
    of a bias-free (face) head; ``base``: its scale and margin."""
    ref = _arch_module(arch)
    need = ["backbone.patch_embed.proj.weight", "backbone.pos_embed", "head.weight",
            "backbone.blocks.0.mlp.fc1.weight"]
    if missing := [k for k in need if k not in state]:
        raise CheckpointError(f"not a timm ViT state dict: no {', '.join(missing)} "
                              f"(keys start {sorted(state)[:6]})")
    dim, chans, patch, _ = state["backbone.patch_embed.proj.weight"].shape
    tokens = state["backbone.pos_embed"].shape[1]
    prefix = 0 if getattr(ref, "no_embed_class", False) else ref.num_prefix_tokens
    grid = round((tokens - prefix) ** 0.5)
    if grid * grid != tokens - prefix:
        raise CheckpointError(f"pos_embed has {tokens} tokens: not {prefix} prefix token(s) "
                              f"plus a square grid, as {arch} expects")
    depth = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(r"backbone\.blocks\.(\d+)\.", k)))
    heads = num_heads or (ref.blocks[0].attn.num_heads if dim == ref.embed_dim
                          else max(1, dim // 64))
    if dim % heads:
        raise CheckpointError(f"width {dim} is not divisible into {heads} heads; pass "
                              "--num-heads")
    kind = "linear" if "head.bias" in state else margin  # a bias-free head is a cosine head
    base = base or ModelConfig()
    cfg = ModelConfig(
        arch=arch, image_size=grid * patch, in_chans=chans, patch_size=patch, depth=depth,
        embed_dim=dim, num_heads=heads,
        mlp_ratio=state["backbone.blocks.0.mlp.fc1.weight"].shape[0] / dim, head=kind,
        global_pool=ref.global_pool if ref.global_pool in ("token", "avg") else "token",
        head_scale=base.head_scale, head_margin=base.head_margin)
    dc = data_config(cfg)  # the arch's preprocessing, spelled out for params.yaml
    return cfg.model_copy(update={"mean": list(dc["mean"]), "std": list(dc["std"]),
                                  "interpolation": dc["interpolation"],
                                  "crop_pct": dc["crop_pct"]})


def describe_mismatch(state: dict[str, torch.Tensor], model: torch.nn.Module, limit: int = 8
                      ) -> str:
    """Keys missing, unexpected and of another shape, by name (empty when the state fits)."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}"
              for k in sorted(set(want) & set(state)) if state[k].shape != want[k].shape]
    parts = []
    for what, items in (("missing", missing), ("unexpected", extra), ("shape differs", shapes)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{what}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def read_class_names(path: str | Path) -> list[str]:
    """One class per line, or a JSON list; the order is the head's row order."""
    text = Path(path).read_text()
    names = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(set(names)) != len(names):
        raise CheckpointError(f"class names file {path} repeats a name")
    return names


def import_timm(path: str | Path, class_names: list[str], arch: str | None = None,
                head_order: list[str] | None = None, margin: str = "cosface",
                num_heads: int | None = None, base: ModelConfig | None = None) -> Classifier:
    """A Classifier holding a plain timm checkpoint, its head rows in ``class_names`` order.

    ``head_order``: the class of each head row when the checkpoint was trained with another
    order (a class names file); the rows are permuted to ``class_names`` (the dataset's)."""
    state, facts = read_state_dict(path)
    arch = arch or facts.get("arch") or (facts.get("ours") or {}).get("model_config", {}).get(
        "arch")
    if not arch:
        raise CheckpointError(f"checkpoint {path} does not name its architecture; pass --arch "
                              "(for example vit_small_patch16_224)")
    state = to_our_keys(state)
    cfg = infer_config(state, arch, margin, num_heads, base)
    rows = state["head.weight"].shape[0]
    order = head_order or class_names
    if rows != len(order):
        raise CheckpointError(f"checkpoint {path} has {rows} head rows but {len(order)} class "
                              f"names{' in the file' if head_order else ' in the dataset'}")
    if set(order) != set(class_names):
        raise CheckpointError(
            f"classes of the checkpoint and the dataset differ: only in the checkpoint "
            f"{sorted(set(order) - set(class_names))[:5]}, only in the dataset "
            f"{sorted(set(class_names) - set(order))[:5]}")
    if order != class_names:
        perm = torch.tensor([order.index(n) for n in class_names])
        state = {k: v[perm] if k.startswith("head.") else v for k, v in state.items()}
    model = create_model(cfg, len(class_names))
    if problems := describe_mismatch(state, model):
        raise CheckpointError(f"checkpoint {path} does not fit timm {arch} as read from its "
                              f"weights ({cfg.depth} blocks, width {cfg.embed_dim}, "
                              f"{cfg.image_size} px): {problems}")
    model.load_state_dict(state, strict=True)
    return model.eval()
