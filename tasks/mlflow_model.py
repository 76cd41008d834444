"""The registered model as MLflow sees it: a pyfunc that costs its adapter, not a whole network.

Each model version stores only its own part (the base checkpoint for version 1, the sparse
adapter for a request) and a lineage: the artifact URIs and sha256 of the base and the
adapters below it, bottom first. Loading resolves the lineage: downloads each part, checks
its sha256, merges the adapters in order. Everything loaded is safetensors; nothing is
unpickled.

This file is logged as "model from code" (MLflow copies it into the model), so
``mlflow.pyfunc.load_model("models:/forgetting-vit@production")`` and
``mlflow models serve -m models:/forgetting-vit@production --env-manager local`` work in any
environment where this package is installed and the tracking server is reachable.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from forgetting.lora import apply_chain
from forgetting.model import CheckpointError, load_checkpoint
from tasks.registry import ADAPTER, CHECKPOINT


def resolve(lineage: list[dict], own: dict[str, str], own_sha256: str):
    """(model, class names): the base of the lineage (or this version's own checkpoint) with
    every adapter above it merged in order, each part checked against its sha256."""
    parts = [(mlflow.artifacts.download_artifacts(artifact_uri=p["uri"]), p["sha256"])
             for p in lineage]
    parts.append((own.get(CHECKPOINT) or own[ADAPTER], own_sha256))
    if lineage and lineage[0]["kind"] != "full":
        raise CheckpointError(f"the lineage starts at an adapter ({lineage[0]['uri']})")
    (base, base_sha), adapters = parts[0], parts[1:]
    model, names, _ = load_checkpoint(base, expected_sha256=base_sha)
    return apply_chain(model, adapters), names


def decode(blob: str | bytes) -> np.ndarray:
    """A base64-encoded PNG or JPEG (a data: URL prefix allowed) -> uint8 HxW or HxWxC."""
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(blob, str):
        blob = blob.split(",", 1)[1] if blob.startswith("data:") else blob
        try:
            blob = base64.b64decode(blob, validate=True)
        except binascii.Error as e:
            raise ValueError(f"an image string is not base64: {e}") from e
    try:
        with Image.open(io.BytesIO(blob)) as im:
            grey = im.mode in ("1", "L", "LA", "I", "I;16")
            return np.array(im.convert("L" if grey else "RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"an image could not be decoded as PNG or JPEG: {e}") from e


def as_images(model_input) -> list[np.ndarray] | np.ndarray:
    """What a client sent: raw images (a list of uint8 HxW / HxWxC arrays, from base64
    PNG/JPEG strings or integer arrays) or preprocessed float tensors (N, C, H, W)."""
    if isinstance(model_input, pd.DataFrame):
        col = "image" if "image" in model_input.columns else model_input.columns[0]
        values = model_input[col].tolist()
        if values and isinstance(values[0], str | bytes):
            return [decode(v) for v in values]
        model_input = np.asarray(values)
    if isinstance(model_input, dict):
        return as_images(pd.DataFrame({k: list(v) for k, v in model_input.items()}))
    if isinstance(model_input, list | tuple) and model_input and isinstance(
            model_input[0], str | bytes):
        return [decode(v) for v in model_input]
    arr = np.asarray(model_input)
    if arr.dtype.kind == "f":
        if arr.ndim != 4:
            raise ValueError(f"float input must be preprocessed images (N, C, H, W), got "
                             f"shape {arr.shape}")
        return arr.astype(np.float32)
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise ValueError("images must be uint8 (0-255) arrays, base64 PNG/JPEG strings, or "
                         "preprocessed float32 tensors")
    arr = arr.astype(np.uint8)
    one = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] > 4)
    return [arr] if one else list(arr)


class ForgettingModel(PythonModel):
    """Input: raw images (base64 PNG/JPEG strings, e.g. ``{"inputs": {"image": [...]}}``, or
    uint8 arrays H x W or H x W x C), which the version's own preprocessing turns into model
    inputs, or float32 tensors (N, C, H, W) already preprocessed with the data config in the
    model's metadata. Output: one row per image: class, class_index, probability and the
    probabilities of every class (in class_index order)."""

    def load_context(self, context) -> None:
        cfg = context.model_config or {}
        self.model, self.class_names = resolve(cfg.get("lineage", []), context.artifacts,
                                               cfg["sha256"])
        self.model.eval()

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """Each raw image through this version's eval transform (forgetting.preprocess): at
        the model's size only normalised, else resized and centre-cropped as timm does."""
        from forgetting.preprocess import eval_transform

        cfg, out = self.model.cfg, []
        for img in images:
            if img.ndim == 3 and img.shape[-1] == 4:
                img = img[..., :3]  # RGBA: the alpha channel is not an image channel
            if img.ndim == 2:
                img = img[..., None]
            if img.shape[-1] != cfg.in_chans:  # grey for a colour model, or the reverse
                img = (np.repeat(img, cfg.in_chans, -1) if img.shape[-1] == 1 else
                       np.round(img @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None])
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
            h, w = t.shape[1:]
            out.append(eval_transform(cfg, h if h == w else -1)(t))
        return torch.stack(out)

    # the hint is one MLflow skips (it infers no schema from a DataFrame), which also keeps it
    # from warning, in every process that loads the model, that predict has none; any input
    # ``as_images`` reads is accepted (arrays, dicts, lists too)
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        got = as_images(model_input)
        x = torch.from_numpy(got) if isinstance(got, np.ndarray) else self.preprocess(got)
        with torch.inference_mode():
            probs = self.model(x).softmax(-1)
        p, idx = probs.max(-1)
        return pd.DataFrame({"class": [self.class_names[i] for i in idx.tolist()],
                             "class_index": idx.numpy(), "probability": p.numpy(),
                             "probabilities": [row.tolist() for row in probs.numpy()]})


mlflow.models.set_model(ForgettingModel())
