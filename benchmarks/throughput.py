"""Images per second for data loading alone, a forward pass alone and one GS-LoRA training
step, for the digits model and for ViT-S/16 at 224 px, so the gap to the compute limit shows.

Random weights (nothing is downloaded); the 224 px data is a synthetic RGB Parquet dataset
stored at 256 px, loaded through the model's timm transform (resize, centre crop,
normalise), as a user's ImageFolder would be. On a CPU the ViT-S runs a few batches only.

    python benchmarks/throughput.py                       # both models, this machine's device
    python benchmarks/throughput.py --models vit_s --batches 20 --batch-size 128 --device cuda
    python benchmarks/throughput.py --sampler             # shuffles over data 6x the cache

``--sampler`` loads a synthetic 224 px RGB dataset whose decoded images are 6x the row-group
cache (the cache made small, so the dataset stays small) with today's uniform shuffle and
with the block shuffle (``forgetting.datasets.BlockShuffleSampler``): images per second and
row groups decoded per image, for the same number of batches.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import common_args, dataset, setup  # benchmarks/ is on sys.path as a script
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from forgetting.config import ForgetConfig, ModelConfig
from forgetting.data import write_dataset
from forgetting.datasets import ParquetImageDataset, splits
from forgetting.lora import add_lora, lora_groups
from forgetting.methods.gs_lora.objective import GSLoRA
from forgetting.methods.objective import Setup
from forgetting.model import create_model
from forgetting.preprocess import eval_transform
from forgetting.runtime import ACCEL, autocast, compiled, loader_options, to_device
from forgetting.train import forward as request_forward

VIT_S = ModelConfig(arch="vit_small_patch16_224", image_size=224, patch_size=16, in_chans=3,
                    depth=12, embed_dim=384, num_heads=6)


def synthetic_rgb(cache: Path, n: int = 512, size: int = 256, classes: int = 100,
                  row_group_size: int = 256) -> Path:
    """Smooth random RGB images (PNG-compressible like photos, unlike noise), cached."""
    path = cache / f"synthetic-rgb-{n}-{size}-{row_group_size}.parquet"
    if not path.exists():
        rng = np.random.default_rng(0)
        low = rng.integers(0, 255, (n, 8, 8, 3)).astype(np.uint8)
        imgs = low.repeat(size // 8, 1).repeat(size // 8, 2)
        write_dataset(path, imgs, np.arange(n) % classes, [f"c{i:03d}" for i in range(classes)],
                      source="synthetic", val_fraction=0.01, test_fraction=0.01,
                      row_group_size=row_group_size)
    return path


def sampler_throughput(cache: Path, batch: int, batches: int, cache_mb: int = 64,
                       times: float = 6.0) -> dict:
    """Uniform against block shuffle on a dataset ``times`` the row-group cache, at 224 px."""
    from forgetting.datasets import BlockShuffleSampler, block_window

    per_image = 3 * 224 * 224
    n = int(times * (cache_mb << 20) / per_image) + 1
    path = synthetic_rgb(cache, n=n, size=224, row_group_size=32)
    out = {"images": n, "cache_mb": cache_mb, "batch": batch, "batches": batches}
    for name in ("uniform", "block"):
        ds = ParquetImageDataset(path, "train", cache_bytes=cache_mb << 20,
                                 transform=eval_transform(VIT_S, 224))
        out["decoded_over_cache"] = round(ds.decoded_bytes() / ds.cache_limit, 1)
        if name == "uniform":
            loader = DataLoader(ds, batch_size=batch, shuffle=True,
                                generator=torch.Generator().manual_seed(0))
        else:
            out["window_row_groups"] = block_window(ds)
            loader = DataLoader(ds, batch_size=batch,
                                sampler=BlockShuffleSampler(ds, block_window(ds), 0))
        it = iter(loader)
        next(it)  # the first batch fills the cache either way
        ds._cache.misses = 0
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - t0
        out[name] = {"img_s": round(batch * batches / seconds, 1),
                     "row_groups_decoded_per_image": round(ds._cache.misses / (batch * batches),
                                                           3)}
    out["speedup"] = round(out["block"]["img_s"] / out["uniform"]["img_s"], 1)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, batches: int, warmup: int, device: torch.device) -> float:
    """Seconds per call after ``warmup`` calls (compilation, caches, cuDNN autotuning)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / batches


def measure(name: str, cfg: ModelConfig, ds: ParquetImageDataset, num_classes: int,
            batch: int, batches: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    # loading alone: decode + the model's transform + collate (+ pinned copy on CUDA)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0), **loader_options(device))
    it = iter(loader)
    n_load = min(batches, len(loader) - 1)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_load):
        x, _ = next(it)
        to_device(x, device)
    _sync(device)
    load_s = (time.perf_counter() - t0) / n_load

    model = create_model(cfg, num_classes).to(device).eval()
    x = to_device(torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size), device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x[:1])
    flops_per_image = fc.get_total_flops()
    forward = compiled(model)

    def fwd():
        with torch.inference_mode(), autocast(device):
            forward(x)

    fwd_s = timed(fwd, batches, 2, device)

    peft_model = add_lora(model, 8, 8.0).to(device)
    base = peft_model.get_base_model()
    groups = list(lora_groups(peft_model).values())
    opt = torch.optim.AdamW([p for g in groups for p in g], lr=1e-3)
    fcfg = ForgetConfig().for_request(None, "gs-lora")
    objective = GSLoRA(Setup(model, None, [], [], [], [], fcfg, device))
    half = batch // 2  # as a request's step: retained and forgotten images in one batch

    def step():
        b = request_forward(base, (x[:half], y[:half]), (x[half:], y[half:]), None, fcfg.alpha, device)
        loss = objective.terms(b).total()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    peft_model.train()
    step_s = timed(step, batches, 2, device)
    return {"model": name, "arch": cfg.arch, "image_size": cfg.image_size, "batch": batch,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "gflops_per_image": round(flops_per_image / 1e9, 3),
            "load_img_s": round(batch / load_s, 1), "forward_img_s": round(batch / fwd_s, 1),
            "train_step_img_s": round(batch / step_s, 1),
            "forward_tflops": round(flops_per_image * batch / fwd_s / 1e12, 3),
            "loader_workers": ACCEL.workers, "amp": str(ACCEL.amp_dtype),
            "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap)
    ap.add_argument("--models", nargs="+", default=["digits", "vit_s"],
                    choices=["digits", "vit_s"])
    ap.add_argument("--batches", type=int, default=None,
                    help="timed batches (default: 20 on CUDA; 20 digits / 3 ViT-S on CPU)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: 256 digits; 64 ViT-S on CUDA, 16 on CPU")
    ap.add_argument("--sampler", action="store_true",
                    help="only the uniform against the block shuffle, on data 6x the cache")
    args = ap.parse_args()
    cfg, device = setup(args)
    cache = Path(args.cache)
    if args.sampler:
        r = sampler_throughput(cache, args.batch_size or 64, args.batches or 10)
        print(f"{r['images']} images at 224 px, decoded {r['decoded_over_cache']}x the "
              f"{r['cache_mb']} MiB cache, {r['batches']} batches of {r['batch']}: uniform "
              f"shuffle {r['uniform']['img_s']} img/s ({r['uniform']['row_groups_decoded_per_image']}"
              f" row groups decoded per image), block shuffle {r['block']['img_s']} img/s "
              f"({r['block']['row_groups_decoded_per_image']}; window "
              f"{r['window_row_groups']} row groups): {r['speedup']}x")
        if args.json:
            print(json.dumps({"sampler": r, "threads": torch.get_num_threads()}))
        return
    cuda = device.type == "cuda"
    rows = []
    for name in args.models:
        if name == "digits":
            path, _ = dataset(cfg, cache)
            ds = splits(path, cfg.model)["train"]
            rows.append(measure(name, cfg.model, ds, ds.info.num_classes,
                                args.batch_size or 256, args.batches or 20, device))
        else:
            path = synthetic_rgb(cache)
            ds = ParquetImageDataset(path, "train", transform=eval_transform(VIT_S, 256))
            rows.append(measure(name, VIT_S, ds, ds.info.num_classes,
                                args.batch_size or (64 if cuda else 16),
                                args.batches or (20 if cuda else 3), device))
        r = rows[-1]
        print(f"{r['model']:>6} {r['arch']} {r['image_size']}px batch {r['batch']} on "
              f"{r['device']} ({r['gflops_per_image']} GFLOP/image): loading "
              f"{r['load_img_s']:.0f} img/s, forward {r['forward_img_s']:.0f} img/s "
              f"({r['forward_tflops']} TFLOP/s), GS-LoRA step {r['train_step_img_s']:.0f} img/s"
              f"; loading/forward {r['load_img_s'] / r['forward_img_s']:.2f}x, "
              f"step/forward {r['train_step_img_s'] / r['forward_img_s']:.2f}x")
    if args.json:
        print(json.dumps({"rows": rows, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
