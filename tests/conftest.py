"""Shared fixtures: a tiny ViT pretrained once per session on the bundled digits.

Hermetic settings are applied before Prefect / MLflow / DVC can be imported by any test.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="forgetting-tests-"))
os.environ.update(
    PREFECT_HOME=str(_SESSION_TMP / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="true",
    MLFLOW_DISABLE_TELEMETRY="true",
    DVC_NO_ANALYTICS="1",
    DVC_SITE_CACHE_DIR=str(_SESSION_TMP / "dvc-site"),
    HF_HUB_OFFLINE="1",
    TQDM_DISABLE="1",
)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from forgetting.config import Config  # noqa: E402

TINY = {
    "model": {"embed_dim": 64, "depth": 4, "num_heads": 4, "image_size": 16, "patch_size": 4},
    "pretrain": {"epochs": 25, "batch_size": 64, "lr": 3e-3},
    "forget": {"epochs": 5},
}


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return Config.model_validate(TINY)


@pytest.fixture(scope="session")
def digits(session_tmp):
    from forgetting.data import ParquetImageDataset, import_sklearn_digits

    path = session_tmp / "digits.parquet"
    info = import_sklearn_digits(path, 16)
    return {"path": path, "info": info,
            **{s: ParquetImageDataset(path, s) for s in ("train", "val", "test")}}


@pytest.fixture(scope="session")
def base_model(digits, tiny_cfg, session_tmp):
    """(model, checkpoint path) of a tiny ViT pretrained on digits (~96 % val accuracy)."""
    from forgetting.model import save_checkpoint
    from forgetting.pretrain import pretrain

    torch.set_num_threads(2)
    res = pretrain(tiny_cfg.model, 10, digits["train"], digits["val"], tiny_cfg.pretrain,
                   torch.device("cpu"), progress=False)
    path = session_tmp / "base.safetensors"
    save_checkpoint(res.model, path, digits["info"].class_names)
    return res.model, path
