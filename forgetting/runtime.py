"""Where and how torch runs: the device, the CPU thread count, deterministic kernels.

Every entry point (CLI command, Prefect task, ``dvc repro`` stage, benchmark) calls
``setup_runtime`` with the config, so the same inputs give the same bytes on one machine:
CPU float sums depend on how work is split between threads, and some CUDA kernels are
non-deterministic unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from .config import Config


@dataclass
class Accel:
    """How training and evaluation use the device, set once per process by setup_runtime."""

    amp_dtype: torch.dtype | None = None
    workers: int = 0
    channels_last: bool = False
    compile: bool = False
    # torch.compile's backend; benchmarks/gpu_check.py --tiny traces with "aot_eager" on the
    # CPU (the graph capture a GPU run goes through, without inductor's C++ build: 23 CPU-s)
    compile_backend: str = "inductor"


ACCEL = Accel()


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def setup_runtime(cfg: Config) -> torch.device:
    """Apply ``threads`` and ``deterministic`` from the config, and set ``ACCEL`` (autocast,
    loader workers, channels-last, compile: used on CUDA only); return the device to use."""
    # FORGET_DEVICE: set by a deployment's job variables (``forget stack deploy --device``)
    # to route a workspace's requests to the GPU workers of its pool
    device = resolve_device(os.environ.get("FORGET_DEVICE") or cfg.device)
    # FORGET_THREADS: a host that runs several jobs at once (workers sharing a machine, a
    # parallel test run) caps each one's threads; runs repeat bit for bit at a fixed count
    threads = int(os.environ["FORGET_THREADS"]) if os.environ.get("FORGET_THREADS") else cfg.threads
    if threads is not None and cfg.evidence.parallel:
        # two trainings at once (the request's and its retrain reference): each gets half,
        # or both run several times slower (measured: 5x on 2 cores with 2 threads each)
        threads = max(1, threads // 2)
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(cfg.deterministic)
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    wants_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and bf16)
    ACCEL.amp_dtype = torch.bfloat16 if cuda and wants_bf16 else None
    ACCEL.workers = (cfg.loader_workers if cfg.loader_workers is not None
                     else min(8, max((os.cpu_count() or 1) - 1, 0)) if cuda else 0)
    ACCEL.channels_last = cuda and cfg.channels_last
    ACCEL.compile = cfg.compile
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when enabled; a no-op on the CPU (runs repeat bit for bit)."""
    if ACCEL.amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=ACCEL.amp_dtype)


def loader_options(device: torch.device) -> dict:
    """DataLoader worker processes and pinned memory (CUDA), so the GPU is not kept waiting."""
    opts: dict = {"num_workers": ACCEL.workers, "pin_memory": device.type == "cuda"}
    if ACCEL.workers:
        opts["persistent_workers"] = True
    return opts


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch onto the device without a host sync (pinned memory), channels-last on CUDA."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if ACCEL.channels_last and \
        x.ndim == 4 else x


def compiled(module: nn.Module) -> nn.Module:
    """``torch.compile(module)`` when enabled; the module itself otherwise (the weights are
    shared either way, so saving reads the uncompiled module)."""
    return torch.compile(module, backend=ACCEL.compile_backend) if ACCEL.compile else module
