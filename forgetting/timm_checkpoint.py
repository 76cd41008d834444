"""Import a model trained with plain timm: its weights, settings, class order and preprocessing,
with nothing guessed.

A user arrives with ``timm.create_model(name, num_classes=N)`` weights (``blocks.0.…``,
``head.weight``), saved with safetensors or ``torch.save`` (a bare state dict or a timm
``train.py`` checkpoint holding ``state_dict``, ``arch`` and ``args``). Every setting of timm's
``VisionTransformer`` comes from one named place:
- the weights, where their keys and shapes decide it (width, depth, patch, image size, MLP
  ratio, class and register tokens, norm placement, biases, layer scale, the head's kind);
- the model's own config: a timm ``train.py`` checkpoint's ``args``, or a ``config.json``
  (or ``<weights>.json``) beside the weights, in timm's layout (``architecture``,
  ``model_args``, ``pretrained_cfg``) or Hugging Face's (``model_type: vit``,
  ``num_attention_heads``, ...);
- a flag (``--num-heads``, ``--global-pool``, ``--model-arg KEY=VALUE``);
- the architecture's own value, only where the weights have the architecture's own shape
  (then they are that architecture) or for settings that no file states (the activation):
  said so in the report.
The number of attention heads and the pooling, which no weights tell, are otherwise refused
with the flag to pass. Then timm's own model, built from what the file declares, is loaded with
the user's weights and must give the same outputs as ours on a batch (a flag that changes the
model against its file, or a conversion of ours that is wrong, is refused).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from .config import ModelConfig
from .model import CheckpointError, Classifier, create_model, read_state_dict
from .preprocess import arch_defaults, data_config

VIT_FAMILIES = ("vit_", "deit_", "deit3_")
PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, wrappers, torch.compile
# set by us (sizes, read from the weights) or only used in training: never from a file
OURS = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "mlp_ratio"}
TRAINING_ONLY = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate",
                 "attn_drop_rate", "drop_path_rate", "weight_init", "fix_init"}
# what no weights tell and a wrong value of which breaks the model outright: from a file or a
# flag, else refused (unless the weights have the architecture's own shape)
REQUIRED = {"num_heads": "--num-heads"}
# what no weights tell either, where the architecture's value is the one timm trains with
# unless told otherwise: taken from the arch, and said so (the validation check catches a
# model trained another way)
FLAGS = {"global_pool": "--global-pool"}
HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
          "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}


@dataclass
class Declared:
    """What a model's own config says of it (``source`` names the file or the args)."""

    source: str = ""
    arch: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None


@dataclass
class ImportReport:
    """Each setting and preprocessing value with where it came from, and the outputs check."""

    arch: str
    settings: dict[str, dict] = field(default_factory=dict)  # name -> {"value", "source"}
    preprocessing: dict[str, dict] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"timm {self.arch}: " + ", ".join(
            f"{k} {v['value']} ({v['source']})" for k, v in self.settings.items())]
        out.append("preprocessing: " + ", ".join(
            f"{k} {v['value']} ({v['source']})" for k, v in self.preprocessing.items()))
        if self.check:
            out.append(f"outputs check: timm's {self.arch} from {self.check['reference']} and "
                       f"ours agree on {self.check['compared']} (max difference "
                       f"{self.check['max_abs_diff']:.1e})")
        return out

    def as_dict(self) -> dict:
        return {"arch": self.arch, "settings": self.settings,
                "preprocessing": self.preprocessing, "check": self.check}


def to_our_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys -> ours: ``backbone.`` before everything but the classifier ``head``."""
    out = {}
    for k, v in _strip(state).items():
        if not (k.startswith("backbone.") or k.startswith("head.")):
            k = "backbone." + k
        out[k] = v
    return out


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in PREFIXES:
            k = k.removeprefix(p)
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


def _vit_args() -> set[str]:
    import inspect

    from timm.models.vision_transformer import VisionTransformer

    return set(inspect.signature(VisionTransformer.__init__).parameters) - {"self"}


def _config_file(path: Path) -> Path | None:
    for p in (path.with_suffix(".json"), path.parent / "config.json"):
        if p.is_file() and p != path:
            return p
    return None


def read_declared(path: Path, facts: dict) -> Declared:
    """The settings a checkpoint's own config declares: timm ``train.py`` args, or a
    ``config.json`` / ``<weights>.json`` beside it (timm's or Hugging Face's layout)."""
    if "args" in facts:
        a = facts["args"]
        kw = dict(a.get("model_kwargs") or {})
        if a.get("gp"):
            kw["global_pool"] = a["gp"]
        return Declared("train.py args", a.get("model") or facts.get("arch"), kw)
    cfg_path = _config_file(path)
    if cfg_path is None:
        return Declared()
    try:
        d = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path} beside the weights is not a JSON config: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{cfg_path} beside the weights is not a JSON object")
    if "architecture" in d or "model_args" in d:  # timm's layout (push_to_hf_hub)
        kw = dict(d.get("model_args") or {})
        if "global_pool" in d:
            kw.setdefault("global_pool", d["global_pool"])
        pc = d.get("pretrained_cfg") or {}
        pre = {k: pc[k] for k in ("mean", "std", "interpolation", "crop_pct") if k in pc}
        return Declared(cfg_path.name, d.get("architecture"), kw, pre, d.get("label_names"))
    if d.get("model_type") in ("vit", "deit"):  # Hugging Face's ViTConfig
        kw: dict[str, Any] = {}
        if "num_attention_heads" in d:
            kw["num_heads"] = d["num_attention_heads"]
        if "hidden_size" in d and "intermediate_size" in d:
            kw["mlp_ratio"] = d["intermediate_size"] / d["hidden_size"]
        for ours, theirs in (("embed_dim", "hidden_size"), ("depth", "num_hidden_layers"),
                             ("img_size", "image_size"), ("patch_size", "patch_size"),
                             ("in_chans", "num_channels"), ("qkv_bias", "qkv_bias")):
            if theirs in d:
                kw[ours] = d[theirs]
        if "hidden_act" in d:
            if d["hidden_act"] not in HF_ACT:
                raise CheckpointError(f"{cfg_path}: activation {d['hidden_act']!r} has no timm "
                                      "equivalent here")
            kw["act_layer"] = HF_ACT[d["hidden_act"]]
        kw.setdefault("global_pool", "token")  # ViTForImageClassification reads the CLS token
        labels = d.get("id2label")
        names = ([labels[k] for k in sorted(labels, key=int)] if isinstance(labels, dict)
                 else None)
        return Declared(cfg_path.name, None, kw, {}, names)
    raise CheckpointError(f"{cfg_path} beside the weights is neither timm's config.json "
                          "(architecture, model_args) nor Hugging Face's (model_type: vit)")


def from_weights(state: dict[str, torch.Tensor], arch: str
                 ) -> dict[str, Any]:
    """The settings the weights decide (timm key names): sizes, tokens, norms, biases."""
    need = ["patch_embed.proj.weight", "pos_embed", "head.weight", "blocks.0.mlp.fc1.weight"]
    if missing := [k for k in need if k not in state]:
        named = ", ".join(k if k.startswith("head.") else f"backbone.{k}" for k in missing)
        raise CheckpointError(f"not a timm ViT state dict: no {named} (keys start "
                              f"{sorted(state)[:6]})")
    dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
    class_token = "cls_token" in state
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = int(class_token) + reg
    tokens = state["pos_embed"].shape[1]

    def square(n: int) -> bool:
        return n > 0 and round(n ** 0.5) ** 2 == n

    if square(tokens - prefix):
        no_embed_class, grid = False, round((tokens - prefix) ** 0.5)
    elif prefix and square(tokens):
        no_embed_class, grid = True, round(tokens ** 0.5)
    else:
        raise CheckpointError(f"pos_embed has {tokens} tokens: neither {prefix} prefix "
                              f"token(s) plus a square grid nor a square grid alone, as {arch} "
                              "expects")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    out = {"embed_dim": dim, "depth": depth, "patch_size": patch, "img_size": grid * patch,
           "in_chans": chans, "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
           "class_token": class_token, "reg_tokens": reg, "no_embed_class": no_embed_class,
           "pre_norm": "norm_pre.weight" in state,
           "fc_norm": "fc_norm.weight" in state,
           "final_norm": "norm.weight" in state or "fc_norm.weight" in state,
           "qkv_bias": "blocks.0.attn.qkv.bias" in state,
           "qk_norm": "blocks.0.attn.q_norm.weight" in state,
           "proj_bias": "blocks.0.attn.proj.bias" in state,
           "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None}
    if any(k.startswith("attn_pool.") for k in state):
        out["global_pool"] = "map"
    return out


def _ref_values(ref: torch.nn.Module) -> dict[str, Any]:
    """The architecture's own values of the settings ``from_weights`` reads."""
    keys = set(ref.state_dict())
    return {"embed_dim": ref.embed_dim, "depth": len(ref.blocks),
            "patch_size": ref.patch_embed.patch_size[0], "in_chans": ref.patch_embed.proj.in_channels,
            "mlp_ratio": ref.blocks[0].mlp.fc1.out_features / ref.embed_dim,
            "class_token": "cls_token" in keys,
            "reg_tokens": getattr(ref, "num_reg_tokens", 0),
            "no_embed_class": ref.no_embed_class, "pre_norm": "norm_pre.weight" in keys,
            "fc_norm": "fc_norm.weight" in keys,
            "final_norm": "norm.weight" in keys or "fc_norm.weight" in keys,
            "qkv_bias": "blocks.0.attn.qkv.bias" in keys,
            "qk_norm": "blocks.0.attn.q_norm.weight" in keys,
            "proj_bias": "blocks.0.attn.proj.bias" in keys,
            "init_values": 1e-5 if "blocks.0.ls1.gamma" in keys else None,
            "num_heads": ref.blocks[0].attn.num_heads, "global_pool": ref.global_pool}


def resolve_settings(weights: dict[str, Any], declared: Declared, flags: dict[str, Any],
                     arch: str, ref: torch.nn.Module
                     ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """(ours, sources, reference): the settings our model is built with and where each came
    from, and the ones timm's reference model is built with (the file's word over a flag)."""
    own = _ref_values(ref)
    shape = ("embed_dim", "depth", "patch_size", "mlp_ratio")
    arch_shaped = all(weights[k] == own[k] for k in shape)
    vit_args = _vit_args()
    if bad := sorted(set(flags) - vit_args):
        raise CheckpointError(f"--model-arg {bad[0]}: not an argument of timm's "
                              "VisionTransformer")
    values, sources = dict(weights), dict.fromkeys(weights, "weights")
    declared_kw = {k: v for k, v in declared.kwargs.items()
                   if k not in TRAINING_ONLY and k in vit_args}
    for k, v in declared_kw.items():
        if k in weights and weights[k] != v and k in OURS:
            raise CheckpointError(f"{declared.source} says {k} {v}, the weights {weights[k]}: "
                                  "they are not this model's config")
    reference = {**values, **declared_kw}
    for k, v in declared_kw.items():
        if k not in OURS:
            values[k], sources[k] = v, declared.source
    for k, v in flags.items():
        values[k], sources[k] = v, {**REQUIRED, **FLAGS}.get(k, f"--model-arg {k}")
    # timm's own configs (train.py args, config.json's model_args) are complete: timm built
    # the model as create_model(arch, **those), so what they leave out is the arch's
    complete = declared.source and declared.arch
    for k, flag in REQUIRED.items():
        if k in values:
            continue
        if complete:
            values[k], sources[k] = own[k], f"{arch}'s own, as {declared.source} builds it"
            continue
        if not arch_shaped:
            raise CheckpointError(
                f"the weights do not say how many attention heads the model has (width "
                f"{weights['embed_dim']}, depth "
                f"{weights['depth']}; {arch} is width {own['embed_dim']}, depth "
                f"{own['depth']}, so its {own[k]!r} need not apply): pass {flag}, or put the "
                "model's config.json beside the weights")
        values[k], sources[k] = own[k], f"{arch}'s own: the weights have its shape"
    if "global_pool" not in values:
        values["global_pool"] = own["global_pool"]
        sources["global_pool"] = (f"{arch}'s own, as {declared.source} builds it" if complete
                                  else f"{arch}'s own: no file states it (--global-pool)")
    if complete:  # timm's model as the file builds it: its sizes and its own arguments only
        reference = {**{k: v for k, v in weights.items() if k in OURS}, **declared_kw}
    else:
        for k, v in values.items():
            reference.setdefault(k, v)
    if "act_layer" not in values:
        sources["act_layer"] = f"{arch}'s own: no file states it (--model-arg act_layer=...)"
    return values, sources, reference


def _build(arch: str, num_classes: int, settings: dict[str, Any]) -> torch.nn.Module:
    kw = {k: v for k, v in settings.items() if k not in ("img_size",)}
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                 img_size=settings["img_size"], **kw)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise CheckpointError(f"timm cannot build {arch} with {kw}: {e}") from e


def _head_rows(v: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Head rows in the dataset's order; where ``perm`` is -1, a row no training wrote."""
    out = torch.zeros((len(perm), *v.shape[1:]), dtype=v.dtype)
    have = perm >= 0
    out[have] = v[perm[have]]
    if v.ndim == 1:  # a bias: the lowest of the trained ones, so the row wins no argmax
        out[~have] = v.min()
    return out


def check_outputs(ours: Classifier, reference: torch.nn.Module, perm: torch.Tensor | None,
                  tol: float = 1e-3) -> dict[str, Any]:
    """Our model against timm's with the same weights on a seeded batch: the logits (rows in
    the dataset's order, new never-seen rows left out), or the embeddings for a cosine head,
    which timm has no layer for."""
    cfg = ours.cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g)
    ours.eval(), reference.eval()
    with torch.no_grad():
        if cfg.head == "linear":
            want, got, compared = reference(x), ours(x), "logits"
            if perm is not None:
                want, got = want[:, perm[perm >= 0]], got[:, perm >= 0]
        else:
            want = reference.forward_head(reference.forward_features(x), pre_logits=True)
            got, compared = ours.embed(x), "embeddings (a cosine head has no timm equivalent)"
    diff = float((got - want).abs().max())
    scale = float(want.abs().max()) or 1.0
    return {"compared": compared, "max_abs_diff": diff, "agree": diff <= tol * max(1.0, scale)}


def read_class_names(path: str | Path) -> list[str]:
    """One class per line, or a JSON list; the order is the head's row order."""
    text = Path(path).read_text()
    names = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(set(names)) != len(names):
        raise CheckpointError(f"class names file {path} repeats a name")
    return names


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


def _preprocessing(cfg: ModelConfig, declared: Declared, base: ModelConfig
                   ) -> tuple[dict[str, Any], dict[str, dict]]:
    """Mean, std, interpolation and crop: the file's, else params.yaml's, else the arch's
    timm pretrained_cfg, else timm's default; with the source of each."""
    arch = arch_defaults(cfg.arch)
    given, sources = {}, {}
    for k in ("mean", "std", "interpolation", "crop_pct"):
        if k in declared.preprocessing:
            given[k], sources[k] = declared.preprocessing[k], declared.source
        elif getattr(base, k) is not None:
            given[k], sources[k] = getattr(base, k), "params.yaml"
        else:
            sources[k] = (f"{cfg.arch}'s timm pretrained_cfg" if k in arch
                          else "timm's default")
    dc = data_config(cfg.model_copy(update={k: list(v) if isinstance(v, tuple | list) else v
                                            for k, v in given.items()}))
    values = {k: list(dc[k]) if isinstance(dc[k], tuple) else dc[k] for k in sources}
    return values, {k: {"value": values[k], "source": sources[k]} for k in sources}


def import_timm(path: str | Path, class_names: list[str], arch: str | None = None,
                head_order: list[str] | None = None, margin: str = "cosface",
                num_heads: int | None = None, base: ModelConfig | None = None,
                global_pool: str | None = None, model_args: dict[str, Any] | None = None,
                never_seen: list[str] | None = None) -> tuple[Classifier, ImportReport]:
    """A Classifier holding a plain timm checkpoint, its head rows in ``class_names`` order,
    and the report of where each setting came from.

    ``head_order``: the class of each head row when the checkpoint was trained with another
    order (a class names file, or the label names of its config); the rows are permuted to
    ``class_names`` (the dataset's). ``never_seen``: the dataset's never-seen reference
    classes (``data.reference_classes``): the checkpoint must have no head row for them (a
    model trained on them cannot stand for never seeing them); they get new rows that no
    training wrote (weights zero, the lowest bias), as our own pretraining leaves them."""
    path = Path(path)
    state, facts = read_state_dict(path)
    declared = read_declared(path, facts)
    if arch and declared.arch and arch != declared.arch:
        raise CheckpointError(f"--arch {arch} but {declared.source} says {declared.arch}")
    arch = arch or facts.get("arch") or declared.arch or (facts.get("ours") or {}).get(
        "model_config", {}).get("arch")
    if not arch:
        raise CheckpointError(f"checkpoint {path} does not name its architecture; pass --arch "
                              "(for example vit_small_patch16_224)")
    ref = _arch_module(arch)
    raw = _strip(state)
    weights = from_weights(raw, arch)
    flags = {**(model_args or {}),
             **({"num_heads": num_heads} if num_heads else {}),
             **({"global_pool": global_pool} if global_pool is not None else {})}
    values, sources, reference = resolve_settings(weights, declared, flags, arch, ref)
    if values["embed_dim"] % values["num_heads"]:
        raise CheckpointError(f"width {values['embed_dim']} is not divisible into "
                              f"{values['num_heads']} heads ({sources['num_heads']})")
    kind = "linear" if "head.bias" in raw else margin  # a bias-free head is a cosine head
    base = base or ModelConfig()
    core = {"embed_dim", "depth", "patch_size", "img_size", "in_chans", "mlp_ratio",
            "num_heads", "global_pool"}
    own = _ref_values(ref)
    extra = {k: v for k, v in values.items() if k not in core and own.get(k, object()) != v}
    if values["global_pool"] != own["global_pool"]:  # timm derives fc_norm from the pooling
        extra["fc_norm"] = values["fc_norm"]
    cfg = ModelConfig(
        arch=arch, image_size=values["img_size"], in_chans=values["in_chans"],
        patch_size=values["patch_size"], depth=values["depth"], embed_dim=values["embed_dim"],
        num_heads=values["num_heads"], mlp_ratio=values["mlp_ratio"], head=kind,
        global_pool=values["global_pool"], timm_kwargs=extra,
        head_scale=base.head_scale, head_margin=base.head_margin)
    pre, pre_report = _preprocessing(cfg, declared, base)
    cfg = cfg.model_copy(update=pre)
    rows = raw["head.weight"].shape[0]
    unseen = set(never_seen or ())
    trained = [n for n in class_names if n not in unseen]
    order = head_order or declared.class_names or trained
    if unseen and not (head_order or declared.class_names) and rows == len(class_names):
        order = class_names  # a row for every class: the never-seen ones' included
    if seen := sorted(set(order) & unseen):
        raise CheckpointError(
            f"checkpoint {path} has head rows for {', '.join(seen[:5])}, set aside as the "
            "never-seen reference (data.reference_classes): a model trained on them cannot "
            "show what never seeing them looks like; set aside classes it never saw")
    if rows != len(order):
        raise CheckpointError(f"checkpoint {path} has {rows} head rows but {len(order)} class "
                              f"names{' in the file' if head_order else ' in the dataset'}"
                              + (f" ({len(unseen)} never-seen reference classes left out)"
                                 if unseen else ""))
    if set(order) != set(trained):
        raise CheckpointError(
            f"classes of the checkpoint and the dataset differ: only in the checkpoint "
            f"{sorted(set(order) - set(trained))[:5]}, only in the dataset "
            f"{sorted(set(trained) - set(order))[:5]}")
    ours_state = to_our_keys(raw)
    perm = None
    if order != class_names:  # -1: a never-seen class's new row
        perm = torch.tensor([order.index(n) if n not in unseen else -1
                             for n in class_names])
        ours_state = {k: _head_rows(v, perm) if k.startswith("head.") else v
                      for k, v in ours_state.items()}
    model = create_model(cfg, len(class_names))
    if problems := describe_mismatch(ours_state, model):
        raise CheckpointError(f"checkpoint {path} does not fit timm {arch} as read from its "
                              f"weights ({cfg.depth} blocks, width {cfg.embed_dim}, "
                              f"{cfg.image_size} px): {problems}")
    model.load_state_dict(ours_state, strict=True)
    # a cosine (bias-free) head has no timm layer: the reference is the backbone alone
    timm_model = _build(arch, rows if kind == "linear" else 0, reference)
    timm_state = raw if kind == "linear" else {k: v for k, v in raw.items()
                                                if not k.startswith("head.")}
    if problems := describe_mismatch(timm_state, timm_model):
        raise CheckpointError(f"timm's {arch} built from {declared.source or 'the settings'} "
                              f"does not take these weights: {problems}")
    timm_model.load_state_dict(timm_state, strict=True)
    check = check_outputs(model, timm_model, perm)
    check["reference"] = declared.source or "the same settings"
    if not check["agree"]:
        differs = sorted(k for k in flags if reference.get(k) != values.get(k))
        why = (f": {', '.join(differs)} as passed differs from {declared.source}" if differs
               else "")
        raise CheckpointError(
            f"timm's {arch} built from {check['reference']} and ours give other "
            f"{check['compared']} for the same weights (max difference "
            f"{check['max_abs_diff']:.3g}){why}; the import would not be your model")
    report = ImportReport(arch, {k: {"value": values.get(k), "source": sources[k]}
                                 for k in sorted(sources)}, pre_report, check)
    return model.eval(), report
