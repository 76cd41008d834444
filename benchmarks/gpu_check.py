"""One call that shows whether this code works, and how fast, on a GPU.

    python benchmarks/gpu_check.py            # make gpu-check: on the GPU, within 8 minutes
    python benchmarks/gpu_check.py --tiny     # the same code at tiny size on the CPU (tests)

Three parts, each recorded whatever the others did:
1. ``tests/test_cuda.py``: the CUDA code paths (bf16 autocast, loader workers, channels-last)
   through pytest (skipped without CUDA).
2. Throughput of ViT-B/16 at 224 px on synthetic images: forward and one GS-LoRA step
   (``forgetting.train.forward`` + the GS-LoRA objective + AdamW), in bf16, with and without
   ``torch.compile``, and as a fraction of the device's bf16 dense peak where it is known.
3. One erasure request end to end: a synthetic 100-class ImageFolder at 112 px through
   ``forget init / ingest / pretrain / request add / run / status`` in a temporary workspace
   (Prefect, MLflow and DVC as a user runs them), on the device, with the evidence attacks
   and the retrain reference on.
Writes ``benchmarks/results/gpu.json`` (``gpu-tiny.json`` with ``--tiny``) and prints what
failed; exits 1 if any part did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

# dense bf16 peaks (TFLOP/s, no sparsity) from the vendors' data sheets
PEAK_BF16 = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 756.0,
             "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def peak(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sizes(tiny: bool) -> dict:
    if tiny:
        return {"vit": dict(arch="vit_tiny_patch16_224", image_size=32, patch_size=8,
                            in_chans=3, depth=2, embed_dim=64, num_heads=2),
                "batch": 8, "batches": 2, "classes": 10, "px": 16, "per_class": 12,
                "epochs": 2, "forget_epochs": 1}
    return {"vit": dict(arch="vit_base_patch16_224", image_size=224, patch_size=16, in_chans=3,
                        depth=12, embed_dim=768, num_heads=12),
            "batch": 128, "batches": 20, "classes": 100, "px": 112, "per_class": 60,
            "epochs": 6, "forget_epochs": 3}


def cuda_tests(device: torch.device) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py", "-p",
                          "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    last = (res.stdout.strip().splitlines() or [""])[-1]
    return {"ok": res.returncode in (0, 5) and "failed" not in last, "summary": last,
            "seconds": round(time.perf_counter() - t0, 1),
            "output": res.stdout[-3000:] if res.returncode not in (0, 5) else ""}


def throughput(s: dict, device: torch.device) -> dict:
    """Forward and GS-LoRA step images/s in bf16 (autocast on CUDA), eager and compiled."""
    from torch.utils.flop_counter import FlopCounterMode

    from forgetting.config import ForgetConfig, ModelConfig
    from forgetting.model import create_model
    from forgetting.runtime import ACCEL

    cfg = ModelConfig(**s["vit"])
    batch = s["batch"]
    x = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    out: dict = {"model": cfg.arch, "image_size": cfg.image_size, "batch": batch,
                 "amp": str(ACCEL.amp_dtype), "compile_backend": ACCEL.compile_backend}
    model = create_model(cfg, 100).to(device).eval()
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x[:1].float().cpu() if device.type != "cuda" else x[:1])
    gflop = fc.get_total_flops() / 1e9
    out["gflops_per_image"] = round(gflop, 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    top = peak(name) if device.type == "cuda" else None
    out["device_name"], out["peak_bf16_tflops"] = name, top
    fcfg = ForgetConfig().for_request(None, "gs-lora")
    for compiled in (False, True):
        ACCEL.compile = compiled
        key = "compiled" if compiled else "eager"
        try:
            out[key] = _rates(model, x, y, compiled, fcfg, s["batches"], gflop, top, device)
        except Exception as e:  # compile may be unavailable; the eager figures stand
            out[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        finally:
            ACCEL.compile = False
    return out


def _rates(model, x, y, compiled: bool, fcfg, batches: int, gflop: float, top: float | None,
           device: torch.device) -> dict:
    """Forward and GS-LoRA step rates of ``model`` on the batch ``x``, ``y``."""
    from forgetting.lora import add_lora, lora_groups
    from forgetting.methods.gs_lora.objective import GSLoRA
    from forgetting.methods.objective import Setup
    from forgetting.runtime import autocast
    from forgetting.runtime import compiled as maybe_compiled
    from forgetting.train import forward as request_forward

    fwd_model = maybe_compiled(model)  # ACCEL.compile is set to ``compiled`` by the caller

    def fwd():
        with torch.inference_mode(), autocast(device):
            fwd_model(x)

    peft = add_lora(model, 8, 8.0).to(device)
    base = peft.get_base_model()
    opt = torch.optim.AdamW([p for g in lora_groups(peft).values() for p in g], lr=1e-3)
    objective = GSLoRA(Setup(model, None, [], [], [], [], fcfg, device))
    half = len(x) // 2
    peft.train()

    def step():
        b = request_forward(base, (x[:half], y[:half]), (x[half:], y[half:]), None,
                            fcfg.alpha, device)
        loss = objective.terms(b).total()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    row = {}
    for what, fn, flop_mult in (("forward", fwd, 1.0), ("gs_lora_step", step, 3.0)):
        img_s = len(x) / _timed(fn, batches, 3 if compiled else 1, device)
        tflops = img_s * gflop * flop_mult / 1e3  # a step: forward + backward ~ 3x
        row[what] = {"img_s": round(img_s, 1), "tflops": round(tflops, 2),
                     "of_peak": round(tflops / top, 3) if top else None}
    return row


def _timed(fn, batches: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / batches


def synthetic_folder(root: Path, classes: int, px: int, per_class: int) -> Path:
    """An ImageFolder of smooth random RGB images, a pattern per class (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c:03d}"
        d.mkdir(parents=True)
        pattern = rng.integers(0, 255, (4, 4, 3))
        for i in range(per_class):
            noise = rng.integers(-40, 40, (4, 4, 3))
            low = np.clip(pattern + noise, 0, 255).astype(np.uint8)
            img = low.repeat(px // 4, 0).repeat(px // 4, 1)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def request_end_to_end(s: dict, device: torch.device, tiny: bool, work: Path | None = None
                       ) -> dict:
    """forget init / ingest / pretrain / request add / run / status in a workspace under
    ``work`` (default: a new temp folder, kept and named in the results to look into)."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="gpu-check-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    src = synthetic_folder(work / "images", s["classes"], s["px"], s["per_class"])
    root = work / "ws"
    vit = dict(s["vit"])
    patch = 8 if tiny else 16
    params = {
        "data": {"source": str(src), "image_size": s["px"], "val_fraction": 0.2,
                 "test_fraction": 0.2},
        "model": {**vit, "image_size": s["px"], "patch_size": patch},
        "pretrain": {"epochs": s["epochs"], "batch_size": 32 if tiny else 256,
                     "warmup_epochs": 1},
        "forget": {"epochs": s["forget_epochs"], "batch_size": 16 if tiny else 128,
                   "forget_batch_size": 8 if tiny else 32},
        "evidence": {"reference_models": 2, "reference_epochs": 1,
                     "relearn_repeats": 1, "relearn_max_steps": 5},
        "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0, "max_class_drop": 1.0},
        "device": str(device.type), "threads": None, "deterministic": False,
    }
    env = {**os.environ, "FORGET_DEVICE": device.type}
    steps = []

    # each step a process of its own, as a user types them (its seconds include its start-up);
    # --tiny (CI) forks them from a server that imported the pipeline once (a worker's
    # flow-run server) instead of six interpreters importing it six times: the caller's
    # (the tests'), or one of its own
    forget_cmd = [sys.executable, "-m", "forgetting_cli"]
    if tiny:
        from forgetting_cli.flow_runs import SOCKET_ENV, start_server

        sock = env.get(SOCKET_ENV) or start_server(
            work, ("flows.process_requests", "forgetting_cli.main"), env=env,
            cwd=REPO)  # (it ends with this process)
        if sock:
            env[SOCKET_ENV] = sock
            forget_cmd[2:] = ["forgetting_cli.flow_runs", "--module", "forgetting_cli"]

    def forget(*args):
        t0 = time.perf_counter()
        res = subprocess.run([*forget_cmd, *args, "--root", str(root)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
        steps.append({"command": " ".join(args), "seconds": round(time.perf_counter() - t0, 1),
                      "exit": res.returncode})
        if res.returncode:
            raise RuntimeError(f"forget {' '.join(args)} failed: "
                               f"{(res.stderr or res.stdout).strip()[-1500:]}")
        return res.stdout

    forget("init")
    full = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in params.items():
        full[section] = {**full[section], **values} if isinstance(values, dict) else values
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    forget("ingest")
    forget("pretrain")
    forget("request", "add", "class_000")
    forget("run")
    status = json.loads(forget("status", "--json"))
    req = status["requests"][0]
    return {"ok": req["status"] in ("done", "failed_gate"), "status": req["status"],
            "acc_f": req["acc_f"], "acc_r": req["acc_r"], "steps": steps,
            "workspace": str(root)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (CI)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the request's images and workspace (default: a new temp "
                         "folder, kept)")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/"
                                                "gpu.json, gpu-tiny.json with --tiny)")
    args = ap.parse_args(argv)
    from forgetting.config import Config
    from forgetting.runtime import setup_runtime

    want = "cpu" if args.tiny else ("cuda" if torch.cuda.is_available() else "cpu")
    device = setup_runtime(Config(device=want, threads=None, deterministic=False))
    if args.tiny:
        # the tiny check is about the code path: dynamo and AOT autograd trace the model and
        # the step as on the GPU; inductor's CPU backend would build C++ (23 CPU-s cold here,
        # and the tests start with an empty compile cache) that no GPU run uses
        from forgetting.runtime import ACCEL

        ACCEL.compile_backend = "aot_eager"
    s = sizes(args.tiny)
    result: dict = {"tiny": args.tiny, "device": str(device), "torch": torch.__version__}
    failed = []
    for name, fn in (("cuda_tests", lambda: cuda_tests(device)),
                     ("throughput", lambda: throughput(s, device)),
                     ("request", lambda: request_end_to_end(s, device, args.tiny,
                                                                args.work))):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
            if result[name].get("ok") is False:
                failed.append(name)
        except Exception as e:
            result[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]}
            failed.append(name)
        result[name]["seconds_total"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {'FAILED ' + result[name].get('error', '') if name in failed else 'ok'}"
              f" ({result[name]['seconds_total']}s)", flush=True)
    result["failed"] = failed
    out = Path(args.out) if args.out else HERE / "results" / (
        "gpu-tiny.json" if args.tiny else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from readme_figures import machine

    out.write_text(json.dumps({**result, "machine": machine()}, indent=2) + "\n")
    tp = result.get("throughput", {})
    for key in ("eager", "compiled"):
        for what, r in (tp.get(key) or {}).items():
            if isinstance(r, dict):
                print(f"{tp['model']} {key} {what}: {r['img_s']} img/s, {r['tflops']} TFLOP/s"
                      + (f" ({100 * r['of_peak']:.1f} % of bf16 peak)" if r.get("of_peak")
                         else ""))
    print(f"failed: {', '.join(failed)}" if failed else "every part passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
