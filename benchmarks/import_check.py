"""A user's own timm model, trained outside the project, imported as a new user would.

    python benchmarks/import_check.py [--json]

The "user" trains ``timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4,
in_chans=1, depth=4, embed_dim=96, num_heads=3)`` on Fashion-MNIST (Debian's
dataset-fashion-mnist, read from its IDX files with numpy) with their own normalisation, saves
it with ``safetensors.torch.save_file(model.state_dict())`` and evaluates it themselves with
timm on the workspace's validation images through the same transform. Then, in a fresh
workspace, ``forget pretrain --checkpoint``:
1. as the README's first try (``--arch`` only): refused, with the flag to pass;
2. with ``--num-heads 1`` (a wrong setting): what the validation check says of it;
3. with ``--num-heads 3`` and the user's mean/std in params.yaml: imported, its printed
   validation accuracy beside the user's own;
4. with a timm ``config.json`` beside the weights instead of flags: imported the same.
Records ``benchmarks/results/import.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

ARGS = dict(img_size=28, patch_size=4, in_chans=1, depth=4, embed_dim=96, num_heads=3)
MEAN, STD = 0.2860, 0.3530  # the user's own normalisation (Fashion-MNIST's pixel statistics)


def user_trains(out: Path, epochs: int, per_class: int) -> Path:
    """What the user did before meeting this project: plain timm, plain torch."""
    import timm
    from safetensors.torch import save_file

    from forgetting.data import FASHION_MNIST_DIR, _read_idx

    d = Path(FASHION_MNIST_DIR)
    x = _read_idx(d / "train-images-idx3-ubyte.gz")
    y = _read_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(1)
    pick = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in range(10)])
    xs = (torch.from_numpy(x[pick]).float().div(255).sub(MEAN).div(STD))[:, None]
    ys = torch.from_numpy(y[pick])
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **ARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * (len(xs) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs) - 63, 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    path = out / "model.safetensors"
    save_file(model.eval().state_dict(), path)
    (out / "classes.txt").write_text("\n".join(["tshirt_top", "trouser", "pullover", "dress",
                                                "coat", "sandal", "shirt", "sneaker", "bag",
                                                "ankle_boot"]) + "\n")
    return path


def user_evaluates(weights: Path, dataset: Path) -> float:
    """The user's own evaluation: timm's model, their transform, the workspace's val images."""
    import timm
    from safetensors.torch import load_file

    from forgetting.datasets import ParquetImageDataset

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **ARGS)
    model.load_state_dict(load_file(weights))
    val = ParquetImageDataset(dataset, "val")
    x = torch.stack([val.image_uint8(i) for i in range(len(val))]).float().div(255)
    with torch.no_grad():
        pred = model.eval()(x.sub(MEAN).div(STD)).argmax(-1).numpy()
    return float((pred == val.labels).mean())


def forget(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "forgetting_cli", *args, "--root", str(root)],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    if check and res.returncode:
        raise RuntimeError(f"forget {' '.join(args)}: {res.stderr[-2000:]}")
    return res


def workspace(root: Path, user_stats: bool) -> Path:
    import yaml

    forget(root, "init")
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["data"].update(source="fashion-mnist", image_size=28, val_fraction=0.0334,
                     train_per_class=300)
    p["model"].update(image_size=28, in_chans=1)
    if user_stats:  # the user says how they normalised (else: the arch's timm statistics)
        p["model"].update(mean=[MEAN], std=[STD])
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    forget(root, "ingest")
    return root


def error_line(r: subprocess.CompletedProcess) -> str | None:
    """The ``error:`` line a refused command prints (None when it succeeded)."""
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith("error:")]
    return lines[-1][:400] if lines else None


def printed_accuracy(text: str) -> float | None:
    m = re.search(r"validation accuracy of the imported model: ([0-9.]+)", text)
    return float(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=600, help="the user's training images")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp(prefix="import-check-"))
    t0 = time.perf_counter()
    weights = user_trains(work, args.epochs, args.per_class)
    train_s = time.perf_counter() - t0
    arch = ["--checkpoint", str(weights), "--arch", "vit_tiny_patch16_224",
            "--classes", str(work / "classes.txt")]
    out: dict = {"user_model": {"arch": "vit_tiny_patch16_224", **ARGS}, "user_train_seconds":
                 round(train_s, 1), "cases": {}}

    # a workspace per try: a workspace that has a base model refuses another import
    ws = workspace(work / "ws-first-try", user_stats=True)
    r = forget(ws, "pretrain", *arch[:4], check=False)
    out["cases"]["arch only"] = {"exit": r.returncode, "error": error_line(r)}
    ws = workspace(work / "ws-wrong-heads", user_stats=True)
    r = forget(ws, "pretrain", *arch, "--num-heads", "1", check=False)
    status = json.loads(forget(ws, "status", "--json").stdout) if r.returncode == 0 else None
    out["cases"]["--num-heads 1"] = {
        "exit": r.returncode, "error": error_line(r),
        "status_val_acc": status["base"]["val_acc"] if status else None}
    ws = workspace(work / "ws-right-heads", user_stats=True)
    r = forget(ws, "pretrain", *arch, "--num-heads", "3")
    status = json.loads(forget(ws, "status", "--json").stdout)
    out["user_val_acc"] = user_evaluates(weights, ws / "data" / "dataset.parquet")
    out["cases"]["--num-heads 3"] = {"exit": r.returncode,
                                     "printed_val_acc": printed_accuracy(r.stderr + r.stdout),
                                     "status_val_acc": status["base"]["val_acc"],
                                     "settings": status["base"]["import"]["settings"],
                                     "preprocessing": status["base"]["preprocessing"]}
    ws2 = workspace(work / "ws-config-json", user_stats=False)
    (work / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 10, "model_args": ARGS,
        "pretrained_cfg": {"mean": [MEAN], "std": [STD], "interpolation": "bilinear",
                           "crop_pct": 1.0}}))
    r = forget(ws2, "pretrain", "--checkpoint", str(weights), "--classes",
               str(work / "classes.txt"))
    status = json.loads(forget(ws2, "status", "--json").stdout)
    out["cases"]["config.json"] = {"exit": r.returncode,
                                   "printed_val_acc": printed_accuracy(r.stderr + r.stdout),
                                   "status_val_acc": status["base"]["val_acc"],
                                   "num_heads_source": status["base"]["import"]["settings"][
                                       "num_heads"]["source"]}
    for name, c in out["cases"].items():
        acc = c.get("status_val_acc")
        gap = None if acc is None else 100 * (acc - out["user_val_acc"])
        c["gap_points"] = gap
        print(f"{name}: exit {c['exit']}" + (f", val accuracy {100 * acc:.2f} % (user's own "
                                              f"{100 * out['user_val_acc']:.2f} %, "
                                              f"{gap:+.2f} points)" if acc is not None else
                                              f": {c.get('error') or ''}"))
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
