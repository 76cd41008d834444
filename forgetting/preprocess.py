"""Image preprocessing taken from the model, the way timm does it.

The Parquet store keeps uint8 images at ``data.image_size``; the model's data config (timm's
``pretrained_cfg`` of its architecture: mean, std, interpolation, crop) turns them into model
inputs at load time, with timm's ``create_transform``. A model pre-trained with ImageNet
normalisation therefore sees the inputs it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import timm
import torch
from timm.data import create_transform

from .config import ModelConfig, TrainConfig


@lru_cache(maxsize=64)
def arch_defaults(arch: str) -> dict:
    """The arch's timm pretrained_cfg (a registry lookup: nothing is downloaded)."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except RuntimeError:
        cfg = None
    return cfg.to_dict() if cfg is not None else {}


def _per_channel(values: tuple[float, ...] | list[float], chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    if len(values) == 1 or chans == 1:  # RGB statistics for a grey model: their mean
        return (sum(values) / len(values),) * chans
    raise ValueError(f"{len(values)} mean/std values for a {chans}-channel model")


def input_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """C, H, W of one model input."""
    return cfg.in_chans, cfg.image_size, cfg.image_size


def data_config(cfg: ModelConfig) -> dict:
    """timm's data config for this model: what params.yaml sets, else the arch's defaults."""
    arch = arch_defaults(cfg.arch)
    return {
        "input_size": input_shape(cfg),
        "interpolation": cfg.interpolation or arch.get("interpolation", "bicubic"),
        "mean": _per_channel(cfg.mean or arch.get("mean", (0.5,)), cfg.in_chans),
        "std": _per_channel(cfg.std or arch.get("std", (0.5,)), cfg.in_chans),
        "crop_pct": cfg.crop_pct or arch.get("crop_pct", 1.0),
        "crop_mode": arch.get("crop_mode", "center"),
    }


def to_signed_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1]: the datasets' scaling where no model transform is set."""
    return image.float().div_(127.5).sub_(1.0)


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> [0, 1], what timm's transforms start from."""
    return image.float().div_(255.0)


class ImageTransform:
    """uint8 CxHxW tensor -> float model input: [0, 1], then timm's transform.

    A class rather than a closure so DataLoader workers can pickle it."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(to_unit(image))

    def __repr__(self) -> str:
        return f"ImageTransform({self.transform})"


def batch_transform(transform: Callable[[torch.Tensor], torch.Tensor] | None
                    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The transform applied to a uint8 N x C x H x W batch at once, where it is elementwise
    (the datasets' default scaling; [0, 1] then ``Normalize``); None where it is not."""
    if transform is None:
        return to_signed_unit
    from torchvision.transforms import Normalize

    inner = getattr(transform, "transform", None)
    if type(transform) is not ImageTransform or type(inner) is not Normalize:
        return None
    mean = torch.as_tensor(inner.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(inner.std, dtype=torch.float32).view(1, -1, 1, 1)
    # torchvision's normalize in the same order (sub_ then div_): the same floats per element
    return lambda x: to_unit(x).sub_(mean).div_(std)


def eval_transform(cfg: ModelConfig, stored_size: int) -> ImageTransform:
    """Resize and centre-crop (timm's eval recipe) unless the images are stored at the model's
    input size already (the ingest sized them), then normalise."""
    dc = data_config(cfg)
    if stored_size == cfg.image_size:
        from torchvision.transforms import Normalize

        return ImageTransform(Normalize(dc["mean"], dc["std"]))
    return ImageTransform(create_transform(**dc, is_training=False))


def train_transform(cfg: ModelConfig, train: TrainConfig, stored_size: int) -> ImageTransform:
    """timm's training recipe (random resized crop, flip, colour jitter) when
    ``pretrain.augment``; else the eval transform (the embedded digits: flips change digits)."""
    if not train.augment:
        return eval_transform(cfg, stored_size)
    dc = data_config(cfg)
    jitter = train.color_jitter if cfg.in_chans == 3 else 0.0  # jitter's saturation needs RGB
    return ImageTransform(create_transform(
        input_size=dc["input_size"], is_training=True, interpolation=dc["interpolation"],
        mean=dc["mean"], std=dc["std"], hflip=train.hflip, scale=(train.scale_min, 1.0),
        color_jitter=jitter))


def describe_preprocessing(cfg: ModelConfig, stored_size: int) -> dict:
    """What happens to a stored image before the model sees it, and where each value comes
    from (params.yaml, the arch's timm pretrained_cfg, timm's default): shown at import, in
    ``forget status --json`` and in the MLflow model's metadata."""
    import math

    arch = arch_defaults(cfg.arch)
    dc = data_config(cfg)

    def source(k: str) -> str:
        if getattr(cfg, k) is not None:
            return "params.yaml"
        return f"{cfg.arch}'s timm pretrained_cfg" if k in arch else "timm's default"

    out = {k: {"value": list(dc[k]) if isinstance(dc[k], tuple) else dc[k], "source": source(k)}
           for k in ("mean", "std", "interpolation", "crop_pct")}
    size = cfg.image_size
    if stored_size == size:
        out["steps"] = [f"scale to [0, 1], normalise by mean and std: images are stored at the "
                        f"model's {size}x{size}, so nothing is resized or cropped "
                        "(crop_pct is not used)"]
        return out
    scaled = math.floor(size / dc["crop_pct"])
    steps = [f"resize the shorter side {stored_size} -> {scaled} ({dc['interpolation']})"]
    if scaled > size:
        lost = 1 - (size / scaled) ** 2
        steps.append(f"centre-crop {size}x{size}: {lost:.0%} of the resized image's pixels are "
                     f"cut off (crop_pct {dc['crop_pct']}; model.crop_pct: 1.0 in params.yaml "
                     "resizes without cropping)")
    steps.append("scale to [0, 1], normalise by mean and std")
    out["steps"] = steps
    return out
