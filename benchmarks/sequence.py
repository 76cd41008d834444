"""Sequence benchmark: several erasure requests in a row, against retraining at every step.

    python benchmarks/sequence.py [--steps 5] [--json] [--no-pipeline]

On the embedded digits, forgets one class per step (digit_0, digit_1, ...) with GS-LoRA++ on
full data and with k=4 shots, each step on the model the previous steps left, and at every step
retrains from scratch without all classes forgotten so far. Prints per step Acc_f, Acc_r, Acc_o,
H-Mean and seconds for each. Then runs the same full-data requests through the pipeline
(Prefect flow + MLflow + DVC, in a temp workspace, same base model, evidence off so the work
matches) and compares its wall time with the bare library calls. With --json the last line is
one JSON object: ``steps`` (full data), ``fewshot_steps``, and totals.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import base_model, sequence_setup
from torch.utils.data import ConcatDataset

from forgetting.evaluate import evaluate
from forgetting.mia import membership_inference
from forgetting.pretrain import retrain_baseline
from forgetting.train import forget_classes

KEYS = ("acc_f", "acc_r", "acc_o", "h_mean")


def heldout(splits) -> ConcatDataset:
    return ConcatDataset([splits["val"], splits["test"]])


def mia_aucs(model, splits, forget: list[int], earlier: list[int], device) -> dict:
    """Attack AUC on this step's class (about 100 training images: AUC noise about +-0.045),
    and on every class forgotten so far (5x the images by step 5: the steadier figure)."""
    def auc(classes, before):
        return membership_inference(model, splits["train"], heldout(splits), classes, device,
                                    earlier=before).auc
    return {"mia_auc": auc(forget, earlier), "mia_auc_all": auc(earlier + forget, [])}


def forget_sequence(cfg, model, splits, steps: list[int], device, work: Path, shots: int | None,
                    mia: bool) -> list[dict]:
    names = splits["train"].info.class_names
    test, earlier, rows = splits["test"], [], []
    for i, c in enumerate(steps, 1):
        before = evaluate(model, test, [c], earlier, device=device, class_names=names)
        t0 = time.perf_counter()  # the forgetting only, as retrain_baseline times its training
        res = forget_classes(model, splits["train"], splits["val"], [c],
                             cfg.forget.for_request(shots, index=i - 1), work / f"{shots or 'full'}-{i}",
                             device, earlier=earlier, progress=False)
        seconds = time.perf_counter() - t0
        m = evaluate(res.model, test, [c], earlier, acc_f_before=before.acc_f, device=device,
                     class_names=names)
        row = {"step": i, "classes": [names[c]], "seconds": seconds,
               **{k: getattr(m, k) for k in KEYS}, "groups_kept": len(res.kept_groups)}
        if mia:
            row.update(mia_aucs(res.model, splits, [c], earlier, device))
        rows.append(row)
        model, earlier = res.model, earlier + [c]
    return rows


def retrain_sequence(cfg, splits, steps: list[int], device, mia: bool) -> list[dict]:
    names = splits["train"].info.class_names
    rows = []
    for i, c in enumerate(steps, 1):
        gone = steps[:i]
        res = retrain_baseline(cfg.model, len(names), splits["train"], splits["val"],
                               cfg.pretrain, device, [k for k in range(len(names)) if k not in gone],
                               progress=False)
        m = evaluate(res.model, splits["test"], [c], gone[:-1], device=device, class_names=names)
        row = {"seconds": res.seconds, **{k: getattr(m, k) for k in KEYS[:3]}}
        if mia:
            row.update(mia_aucs(res.model, splits, [c], gone[:-1], device))
        rows.append(row)
    return rows


def pipeline_sequence(cfg, data: Path, base_ckpt: Path, steps: list[int], names) -> dict:
    """The same requests through the Prefect flow (MLflow + DVC) in a temp workspace."""
    root = Path(tempfile.mkdtemp(prefix="forgetting-seq-"))
    from tasks import environment
    from tasks.workspace import Workspace

    ws = Workspace.at(root)
    os.environ.pop("PREFECT_API_URL", None)  # the temporary local server, like `forget run`
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    environment.apply(ws.state)
    from forgetting.config import dump_config
    from forgetting_cli.pipeline import init

    # evidence off and gates open: the flow then does the library's work plus its own
    (root / "params.yaml").write_text(dump_config(cfg.model_copy(update={
        "evidence": cfg.evidence.model_copy(update={"membership_inference": False,
                                                    "retrain_baseline": False}),
        "gates": cfg.gates.model_copy(update={"max_acc_f": 1.0, "max_acc_r_drop": 1.0,
                                              "max_class_drop": 1.0, "evidence": []})})))
    init(root)
    from flows.ingest import ingest_flow
    from flows.pretrain import pretrain_flow
    from flows.process_requests import process_requests_flow
    from tasks.ledger import RequestSpec
    from tasks.requests import add_request

    t0 = time.perf_counter()
    ingest_flow(str(root), str(data))
    pretrain_flow(str(root), str(base_ckpt))
    setup = time.perf_counter() - t0
    for c in steps:
        add_request(ws, RequestSpec(classes=[names[c]], requester="benchmark"))
    t0 = time.perf_counter()
    out = process_requests_flow(str(root))
    seconds = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return {"seconds": seconds, "setup_seconds": setup,
            "statuses": [r["status"] for r in out],
            "h_mean": [r.get("h_mean") for r in out]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=4, help="k of the k-shot variant")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the pipeline overhead run")
    args, cfg, device, data, splits = sequence_setup(ap, argv)
    names = splits["train"].info.class_names
    steps = list(range(args.steps))
    model, ckpt, _ = base_model(cfg, Path(args.cache), splits, device)
    with tempfile.TemporaryDirectory() as work:
        full = forget_sequence(cfg, model, splits, steps, device, Path(work), None, mia=True)
        few = forget_sequence(cfg, model, splits, steps, device, Path(work), args.shots, mia=False)
    retrain = retrain_sequence(cfg, splits, steps, device, mia=True)
    for rows in (full, few):
        for r, rr in zip(rows, retrain, strict=True):
            r.update({f"retrain_{k}": v for k, v in rr.items()})
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "steps": full,
        "fewshot_steps": few, "shots": args.shots,
        "forget_seconds_total": sum(r["seconds"] for r in full),
        "fewshot_forget_seconds_total": sum(r["seconds"] for r in few),
        "retrain_seconds_total": sum(r["seconds"] for r in retrain),
        "library_seconds_total": sum(r["seconds"] for r in full),
    }
    print_table(result)  # before the pipeline run, so a failure there loses nothing
    if not args.no_pipeline:
        p = pipeline_sequence(cfg, data, ckpt, steps, names)
        result.update(pipeline_seconds_total=p["seconds"], pipeline_setup_seconds=p["setup_seconds"],
                      pipeline_statuses=p["statuses"])
        print_pipeline(result)
    if args.json:
        print(json.dumps(result))
    return result


def print_table(r: dict) -> None:
    def pct(x):
        return f"{'-':>7}" if x is None else f"{100 * x:7.2f}"

    for label, key in (("GS-LoRA++ full data", "steps"),
                       (f"GS-LoRA++ {r['shots']}-shot", "fewshot_steps")):
        print(f"\n{label}: one class per step, vs retraining from scratch at that step (%)")
        print(f"{'step':<5}{'class':<9}{'Acc_f':>7}{'Acc_r':>7}{'Acc_o':>7}{'H':>7}{'sec':>6}"
              f"{'| retrain':>9}{'Acc_f':>7}{'Acc_r':>7}{'Acc_o':>7}{'sec':>6}")
        for s in r[key]:
            print(f"{s['step']:<5}{s['classes'][0]:<9}{pct(s['acc_f'])}{pct(s['acc_r'])}"
                  f"{pct(s['acc_o'])}{pct(s['h_mean'])}{s['seconds']:6.1f}{'|':>3}{'':>6}"
                  f"{pct(s['retrain_acc_f'])}{pct(s['retrain_acc_r'])}{pct(s['retrain_acc_o'])}"
                  f"{s['retrain_seconds']:6.1f}")
    last = r["steps"][-1]
    print(f"\nafter {len(r['steps'])} requests (full data): Acc_o {100 * last['acc_o']:.2f} %, "
          f"Acc_r {100 * last['acc_r']:.2f} % vs retrain {100 * last['retrain_acc_r']:.2f} %; "
          f"MIA AUC on the last forgotten class {last['mia_auc']:.3f} vs retrain "
          f"{last['retrain_mia_auc']:.3f}, on all {len(r['steps'])} forgotten classes "
          f"{last['mia_auc_all']:.3f} vs {last['retrain_mia_auc_all']:.3f}")
    def gaps(key):
        return ", ".join(f"{abs(s[key] - s['retrain_' + key]):.3f}" for s in r["steps"])

    print(f"MIA AUC gap to retrain per step: all forgotten classes {gaps('mia_auc_all')}; "
          f"this step's class only {gaps('mia_auc')}")
    print(f"forgetting {r['forget_seconds_total']:.0f}s ({r['fewshot_forget_seconds_total']:.0f}s "
          f"k-shot) vs retraining {r['retrain_seconds_total']:.0f}s: "
          f"{r['retrain_seconds_total'] / r['forget_seconds_total']:.1f}x faster "
          f"({r['retrain_seconds_total'] / r['fewshot_forget_seconds_total']:.1f}x k-shot)")


def print_pipeline(r: dict) -> None:
    if "pipeline_seconds_total" in r:
        print(f"pipeline (Prefect + MLflow + DVC) {r['pipeline_seconds_total']:.0f}s vs library "
              f"{r['library_seconds_total']:.0f}s for the same requests: "
              f"{r['pipeline_seconds_total'] - r['library_seconds_total']:.0f}s overhead, "
              f"{(r['pipeline_seconds_total'] - r['library_seconds_total']) / len(r['steps']):.1f}"
              f"s per request (setup: ingest + register base {r['pipeline_setup_seconds']:.0f}s, "
              f"statuses {r['pipeline_statuses']})")


if __name__ == "__main__":
    main(sys.argv[1:])
