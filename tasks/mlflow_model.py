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


class ForgettingModel(PythonModel):
    """Input: float32 images of shape (N, C, H, W), preprocessed with the data config in the
    model's metadata. Output: one row per image: class, class_index, probability."""

    def load_context(self, context) -> None:
        cfg = context.model_config or {}
        self.model, self.class_names = resolve(cfg.get("lineage", []), context.artifacts,
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
