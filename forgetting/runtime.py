"""Where and how torch runs: the device, the CPU thread count, deterministic kernels.

Every entry point (CLI command, Prefect task, ``dvc repro`` stage, benchmark) calls
``setup_runtime`` with the config, so the same inputs give the same bytes on one machine:
CPU float sums depend on how work is split between threads, and some CUDA kernels are
non-deterministic unless asked otherwise.
"""

from __future__ import annotations

import os

import torch

from .config import Config


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def setup_runtime(cfg: Config) -> torch.device:
    """Apply ``threads`` and ``deterministic`` from the config; return the device to use."""
    device = resolve_device(cfg.device)
    if cfg.threads is not None and torch.get_num_threads() != cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(cfg.deterministic)
    return device
