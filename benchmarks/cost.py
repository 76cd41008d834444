"""What one request costs beside retraining from scratch, on Fashion-MNIST (55,000 training
images): GS-LoRA++ at several caps on its steps per epoch, the cap chosen on the validation
split at equal quality, then reported once on the test split.

    python benchmarks/cost.py [--caps 200,100,50,25] [--json]
        [--config benchmarks/configs/fashion-mnist.yaml]

Seed 0's base model forgets ``tshirt_top`` (one request, full data) once per cap; each is
measured on val: Acc_f, Acc_r, H-Mean, k-NN identification and the linear probe of the class,
and the request's seconds, beside the retrain reference (a model trained from scratch without
the class; its seconds are the denominator). Equal quality, against the largest cap given (by
default 200, the config's): val Acc_f no higher than its Acc_f + 1 point, val H-Mean within
``--tolerance`` of it, identification and probe no higher than its figure + twice the noise of
the difference. The chosen cap is the smallest of equal quality (the largest always is); only
it is measured on test. Base model, retrain and runs are cached (``--cache``), so a second run
only reads.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from runs import PROBES, listed, load, method_rows, reference_rows

CONFIG = "benchmarks/configs/fashion-mnist.yaml"


def equal_quality(row: dict, ref: dict, tolerance: float) -> bool:
    """``row`` (a cap's val row) keeps the quality of ``ref`` (the largest cap's)."""
    ev = [row["evidence"][a]["value"] - ref["evidence"][a]["value"]
          <= 2 * ((row["evidence"][a]["se"] or 0) ** 2 + (ref["evidence"][a]["se"] or 0) ** 2)
          ** 0.5 for a in PROBES]
    return (row["acc_f"] <= ref["acc_f"] + 0.01 and row["h_mean"] >= ref["h_mean"] - tolerance
            and all(ev))


def _brief(row: dict) -> dict:
    return {k: row[k] for k in ("acc_f", "acc_r", "h_mean", "seconds")} | {
        a: row["evidence"][a] for a in PROBES}


def run(bench, caps: list[int], tolerance: float, cls: int = 0) -> dict:
    order = [cls]
    ref = reference_rows(bench, 0, order, "val")[0]
    out = {"class": bench.names[cls], "train_images": len(bench.splits["train"]),
           "tolerance": tolerance, "retrain": {"val": _brief(ref)}, "caps": {}}
    print(f"retrain: {ref['seconds']:.0f} s, val Acc_r {100 * ref['acc_r']:.2f}", flush=True)
    rows = {}
    for cap in sorted(caps, reverse=True):  # the largest first: the others are held to it
        fcfg = bench.cfg.forget.model_copy(update={"max_steps_per_epoch": cap})
        rows[cap] = method_rows(bench, fcfg, "gs-lora++", None, 0, order, "val")[0]
        r = rows[cap]
        out["caps"][str(cap)] = {**_brief(r), "of_retrain": r["seconds"] / ref["seconds"],
                                 "equal_quality": equal_quality(r, rows[max(caps)], tolerance)}
        print(f"cap {cap:>4}: {r['seconds']:.0f} s ({r['seconds'] / ref['seconds']:.3f} of the "
              f"retrain), val Acc_f {100 * r['acc_f']:.2f} Acc_r {100 * r['acc_r']:.2f} "
              f"H {100 * r['h_mean']:.2f}, k-NN {r['evidence']['identification']['value']:.3f}"
              f", probe {r['evidence']['linear_probe']['value']:.3f}, equal quality: "
              f"{out['caps'][str(cap)]['equal_quality']}", flush=True)
    chosen = min(c for c in caps if out["caps"][str(c)]["equal_quality"])
    fcfg = bench.cfg.forget.model_copy(update={"max_steps_per_epoch": chosen})
    test = method_rows(bench, fcfg, "gs-lora++", None, 0, order, "test")[0]
    ref_test = reference_rows(bench, 0, order, "test")[0]
    out.update(chosen=chosen, test={"chosen": _brief(test), "retrain": _brief(ref_test)},
               of_retrain=test["seconds"] / ref_test["seconds"],
               device=str(bench.device), threads=torch.get_num_threads())
    print(f"chosen cap {chosen}, on test: {test['seconds']:.0f} s against {ref_test['seconds']:.0f}"
          f" s ({test['seconds'] / ref_test['seconds']:.3f}), Acc_f {100 * test['acc_f']:.2f}, "
          f"Acc_r {100 * test['acc_r']:.2f} (retrain {100 * ref_test['acc_r']:.2f})")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="200,100,50,25", help="forget.max_steps_per_epoch values")
    ap.add_argument("--tolerance", type=float, default=0.005, help="of val H-Mean")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--cache", default=".forgetting/bench-cache")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args(argv)
    bench = load(args.config, args.cache, args.device)
    result = run(bench, listed(args.caps, int), args.tolerance)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
