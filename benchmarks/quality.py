"""Quality benchmark on the embedded digits: GS-LoRA++ (full data and k-shot) vs retraining.

    python benchmarks/quality.py --quick [--json]

Pretrains a base model (cached under --cache by config hash), forgets a pair of classes with
full data and with k=4 shots, retrains from scratch without them, and prints a table. With
--json the last line is one JSON object (full-data keys, and ``fewshot_``-prefixed copies;
``mia_forget_original`` / ``mia_forget`` / ``mia_forget_retrain``: membership-inference AUC on
the forgotten images, see forgetting/mia.py).
Without --quick it averages over three class pairs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import base_model, common_args, dataset, setup  # benchmarks/ is on sys.path when run as a script
from torch.utils.data import ConcatDataset

from forgetting.config import Config
from forgetting.data import builtin_source
from forgetting.evaluate import evaluate
from forgetting.mia import membership_inference
from forgetting.model import model_bytes
from forgetting.pretrain import retrain_baseline
from forgetting.train import forget_classes

PAIRS = [(0, 1), (3, 8), (5, 6)]


def run_pair(cfg: Config, model, splits, pair, device, work: Path) -> dict:
    names = splits["train"].info.class_names
    test = splits["test"]
    before = evaluate(model, test, pair, device=device, class_names=names)
    row = {"classes": [names[c] for c in pair], "acc_f_before": before.acc_f,
           "acc_r_before": before.acc_r}

    def mia(key: str, m) -> None:  # attack AUC (and member rate) on the forgotten images
        r = membership_inference(m, splits["train"], ConcatDataset([splits["val"], test]), pair,
                                 device)
        row.update({key: r.auc, f"{key}_member_rate": r.member_rate})

    mia("mia_forget_original", model)
    for prefix, shots in (("", None), ("fewshot_", 4)):
        fcfg = cfg.forget.model_copy(update={"shots": shots})
        out = work / f"adapter-{prefix or 'full'}-{pair[0]}-{pair[1]}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = forget_classes(model, splits["train"], splits["val"], pair, fcfg, out, device)
        seconds = time.perf_counter() - t0
        m = evaluate(res.model, test, pair, acc_f_before=before.acc_f, device=device,
                     class_names=names)
        row.update({f"{prefix}acc_f": m.acc_f, f"{prefix}acc_r": m.acc_r,
                    f"{prefix}h_mean": m.h_mean, f"{prefix}forget_seconds": seconds,
                    f"{prefix}trainable_params": res.trainable_params,
                    f"{prefix}total_params": res.total_params,
                    f"{prefix}adapter_bytes": res.adapter_bytes,
                    f"{prefix}model_bytes": model_bytes(model),
                    f"{prefix}groups_kept": len(res.kept_groups),
                    f"{prefix}groups_total": cfg.model.depth,
                    f"{prefix}selected": f"epoch {res.selected_epoch} {res.selected_weights}"})
        mia(f"{prefix}mia_forget", res.model)
    remaining = [c for c in range(len(names)) if c not in pair]
    rr = retrain_baseline(cfg.model, len(names), splits["train"], splits["val"], cfg.pretrain,
                          device, remaining)
    m = evaluate(rr.model, test, pair, device=device, class_names=names)
    row.update(retrain_acc_f=m.acc_f, retrain_acc_r=m.acc_r, retrain_seconds=rr.seconds)
    mia("mia_forget_retrain", rr.model)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one class pair (under 5 minutes)")
    common_args(ap)
    args = ap.parse_args(argv)
    cfg, device = setup(args)
    _, splits = dataset(cfg, Path(args.cache))
    model, _, pretrain_seconds = base_model(cfg, Path(args.cache), splits, device)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for pair in PAIRS[:1] if args.quick else PAIRS:
            rows.append(run_pair(cfg, model, splits, pair, device, Path(work)))
    numeric = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    result = {k: sum(r[k] for r in rows) / len(rows) for k in numeric}
    result.update(classes=[r["classes"] for r in rows], selected=rows[0]["selected"],
                  source=builtin_source(cfg.data.source) or cfg.data.source,
                  train_images=len(splits["train"]),
                  device=str(device), threads=torch.get_num_threads(),
                  pretrain_seconds=pretrain_seconds)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return result


def print_table(r: dict) -> None:
    def pct(x):
        return f"{100 * x:6.2f}"

    print(f"\nForgetting {r['classes']} on {r['source']} ({r['device']})")
    print(f"{'model':<22}{'Acc_f %':>9}{'Acc_r %':>9}{'H-Mean':>9}{'seconds':>9}")
    print(f"{'original':<22}{pct(r['acc_f_before']):>9}{pct(r['acc_r_before']):>9}")
    print(f"{'GS-LoRA++ full data':<22}{pct(r['acc_f']):>9}{pct(r['acc_r']):>9}"
          f"{pct(r['h_mean']):>9}{r['forget_seconds']:9.1f}")
    print(f"{'GS-LoRA++ 4-shot':<22}{pct(r['fewshot_acc_f']):>9}{pct(r['fewshot_acc_r']):>9}"
          f"{pct(r['fewshot_h_mean']):>9}{r['fewshot_forget_seconds']:9.1f}")
    print(f"{'retrain from scratch':<22}{pct(r['retrain_acc_f']):>9}{pct(r['retrain_acc_r']):>9}"
          f"{'':>9}{r['retrain_seconds']:9.1f}")
    print(f"speed-up vs retrain: {r['retrain_seconds'] / r['forget_seconds']:.1f}x full, "
          f"{r['retrain_seconds'] / r['fewshot_forget_seconds']:.1f}x 4-shot; "
          f"adapter {r['adapter_bytes'] / 1024:.1f} KiB = "
          f"{100 * r['adapter_bytes'] / r['model_bytes']:.2f} % of model bytes; "
          f"groups kept {r['groups_kept']:.1f}/{r['groups_total']:.0f}; trainable "
          f"{100 * r['trainable_params'] / r['total_params']:.2f} % of parameters")
    print("membership inference on the forgotten images (attack AUC, 0.5 = never seen; "
          "fraction called member): " + ", ".join(
              f"{label} {r[k]:.3f} / {r[k + '_member_rate']:.2f}" for label, k in (
                  ("original", "mia_forget_original"), ("GS-LoRA++", "mia_forget"),
                  ("4-shot", "fewshot_mia_forget"), ("retrain", "mia_forget_retrain"))))


if __name__ == "__main__":
    main(sys.argv[1:])
