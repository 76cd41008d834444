"""The registered model as MLflow sees it: a pyfunc that costs its adapter, not a whole network.

Each model version stores only its own part (the base checkpoint for version 1, the sparse
adapter for a request) and a lineage: the artifact URIs and sha256 of the parts below it,
bottom first, starting at the nearest full model (the base, or the merged export of a version
that became production). Loading resolves the lineage: downloads each part, checks its
sha256, merges the adapters in order. Everything loaded is safetensors; nothing is unpickled.

This file is logged as "model from code" (MLflow copies it into the model), so
``mlflow.pyfunc.load_model("models:/forgetting-vit@production")`` and
``mlflow models serve -m models:/forgetting-vit@production --env-manager local`` work in any
environment where this package is installed and the tracking server is reachable.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from forgetting.lora import apply_adapter
from forgetting.model import CheckpointError, load_checkpoint
from tasks.registry import ADAPTER, CHECKPOINT


def load_part(model, kind: str, path: str | Path, sha256: str):
    """A full checkpoint replaces the model; an adapter is merged into it."""
    if kind == "full":
        return load_checkpoint(path, expected_sha256=sha256)
    if model is None:
        raise CheckpointError(f"adapter {path} has no model below it in the lineage")
    return apply_adapter(model[0], path, sha256), model[1], model[2]


def resolve(lineage: list[dict], own: dict[str, str], own_sha256: str):
    """(model, class names, extra) of the parts below this version and its own part."""
    model = None
    for part in lineage:
        local = mlflow.artifacts.download_artifacts(artifact_uri=part["uri"])
        model = load_part(model, part["kind"], local, part["sha256"])
    if CHECKPOINT in own:
        model = load_part(model, "full", own[CHECKPOINT], own_sha256)
    elif ADAPTER in own:
        model = load_part(model, "adapter", own[ADAPTER], own_sha256)
    if model is None:
        raise CheckpointError("the model has neither a checkpoint nor an adapter")
    return model


class ForgettingModel(PythonModel):
    """Input: float32 images of shape (N, C, H, W), preprocessed with the data config in the
    model's metadata. Output: one row per image: class, class_index, probability."""

    def load_context(self, context) -> None:
        cfg = context.model_config or {}
        self.model, self.class_names, _ = resolve(cfg.get("lineage", []), context.artifacts,
                                                  cfg["sha256"])
        self.model.eval()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            probs = self.model(x).softmax(-1)
        p, idx = probs.max(-1)
        return pd.DataFrame({"class": [self.class_names[i] for i in idx.tolist()],
                             "class_index": idx.numpy(), "probability": p.numpy()})


mlflow.models.set_model(ForgettingModel())
