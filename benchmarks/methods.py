"""Every method on the same request sequences, over several fresh base models.

    python benchmarks/sequence.py --methods gs-lora,gs-lora++,gs-lora++:4,finetune,neggrad,retrain
                                  --seeds 3 [--steps 5] [--json]

Seed s pretrains a fresh base model (``pretrain.seed = s``), draws the classes to forget (seed
0: digit_0..digit_4, the README's sequence; others: a random choice) and seeds the forgetting
runs. Each method forgets one class per step, each step on the model its previous steps left;
``name:k`` runs it with k images per class. ``retrain`` trains from scratch at every step
without every class forgotten so far: the reference. Per step and method: Acc_f, Acc_r, Acc_o,
H-Mean, seconds, adapter bytes, and the gap between the membership-inference AUC (``mia.py``,
on every class forgotten so far) and retrain's; the table gives mean ± standard deviation
over seeds. Metrics on the test split; the defaults were not chosen on it (see README).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import base_model

from forgetting.evaluate import evaluate
from forgetting.mia import membership_inference
from forgetting.pretrain import retrain_baseline
from forgetting.train import forget_classes

KEYS = ("acc_f", "acc_r", "acc_o", "h_mean", "seconds", "adapter_bytes", "mia_gap")


def parse(spec: str) -> tuple[str, int | None]:
    """``name[:k][@authors]`` -> (name, k); ``@authors`` is read by ``profiled``."""
    name, _, shots = spec.partition("@")[0].partition(":")
    return name, int(shots) if shots else None


def profiled(cfg, spec: str):
    """``cfg`` under ``profile: authors`` for a spec ending in ``@authors`` (the authors'
    settings over ours, as one line in params.yaml would give)."""
    if not spec.endswith("@authors"):
        return cfg
    from forgetting.config import Config

    return Config.model_validate({**cfg.model_dump(mode="json"), "profile": "authors"})


def classes_for(seed: int, n_classes: int, steps: int) -> list[int]:
    if seed == 0:
        return list(range(steps))
    return [int(c) for c in np.random.default_rng(seed).permutation(n_classes)[:steps]]


def _mia(model, splits, gone: list[int], device) -> float | None:
    heldout = splits["val"].joined(splits["test"])
    return membership_inference(model, splits["train"], heldout, gone, device).auc


def run_method(cfg, spec: str, base, splits, order: list[int], device, seed: int,
               retrain_rows: list[dict] | None, split: str = "test") -> list[dict]:
    """One method's sequence, measured on ``split``; with ``retrain_rows``, the
    membership-inference AUC and its gap to retrain too (``benchmarks/tune.py`` skips them)."""
    name, shots = parse(spec)
    cfg = profiled(cfg, spec)
    names = splits["train"].info.class_names
    model, earlier, rows = base, [], []
    with tempfile.TemporaryDirectory() as work:
        for i, c in enumerate(order, 1):
            before = evaluate(model, splits[split], [c], earlier, device=device,
                              class_names=names)
            t0 = time.perf_counter()
            fcfg = cfg.forget.for_request(shots, name, i - 1).model_copy(update={"seed": seed})
            res = forget_classes(model, splits["train"], splits["val"], [c], fcfg,
                                 Path(work) / f"step-{i}", device, earlier=earlier,
                                 progress=False)
            seconds = time.perf_counter() - t0
            m = evaluate(res.model, splits[split], [c], earlier, acc_f_before=before.acc_f,
                         device=device, class_names=names)
            auc = ref = None
            if retrain_rows is not None:
                auc = _mia(res.model, splits, earlier + [c], device)
                ref = retrain_rows[i - 1]["mia_auc"]
            rows.append({"step": i, "acc_f": m.acc_f, "acc_r": m.acc_r, "acc_o": m.acc_o,
                         "h_mean": m.h_mean, "seconds": seconds,
                         "adapter_bytes": res.adapter_bytes, "mia_auc": auc,
                         "mia_gap": None if auc is None or ref is None else abs(auc - ref)})
            model, earlier = res.model, earlier + [c]
    return rows


def run_retrain(cfg, base, splits, order: list[int], device, seed: int) -> list[dict]:
    names = splits["train"].info.class_names
    rows = []
    for i, c in enumerate(order, 1):
        gone = order[:i]
        before = evaluate(base, splits["test"], [c], gone[:-1], device=device, class_names=names)
        res = retrain_baseline(cfg.model, len(names), splits["train"], splits["val"],
                               cfg.pretrain.model_copy(update={"seed": seed}), device,
                               [k for k in range(len(names)) if k not in gone], progress=False)
        m = evaluate(res.model, splits["test"], [c], gone[:-1], acc_f_before=before.acc_f,
                     device=device, class_names=names)
        rows.append({"step": i, "acc_f": m.acc_f, "acc_r": m.acc_r, "acc_o": m.acc_o,
                     "h_mean": m.h_mean, "seconds": res.seconds, "adapter_bytes": None,
                     "mia_auc": _mia(res.model, splits, gone, device), "mia_gap": 0.0})
    return rows


def compare(cfg, splits, device, cache: Path, specs: list[str], seeds: int, steps: int) -> dict:
    names = splits["train"].info.class_names
    runs: dict[str, list[list[dict]]] = {s: [] for s in specs}
    orders, bases = [], []
    for seed in range(seeds):
        scfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"seed": seed})})
        base, _, _ = base_model(scfg, cache, splits, device)
        order = classes_for(seed, len(names), steps)
        orders.append([names[c] for c in order])
        bases.append(evaluate(base, splits["test"], [order[0]], device=device,
                              class_names=names).acc_r)
        # without "retrain" among the specs, no reference: no MIA gap either (a quicker run)
        retrain = (run_retrain(scfg, base, splits, order, device, seed) if "retrain" in specs
                   else None)
        for spec in specs:
            rows = retrain if spec == "retrain" else run_method(scfg, spec, base, splits, order,
                                                                device, seed, retrain)
            runs[spec].append(rows)
            last = rows[-1]
            print(f"seed {seed} {spec:<12} step {steps}: Acc_r {100 * last['acc_r']:.2f} "
                  f"Acc_f {100 * last['acc_f']:.2f}", flush=True)
    table = {spec: [summarise([r[i] for r in per_seed]) for i in range(steps)]
             for spec, per_seed in runs.items()}
    return {"methods": specs, "seeds": seeds, "steps": steps, "orders": orders,
            "base_acc_r": bases, "table": table, "runs": runs}


def summarise(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every key (None where not measured)."""
    out = {}
    for k in KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = (None if not vals else
                  {"mean": float(np.mean(vals)),
                   "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)})
    return out


def print_table(r: dict) -> None:
    def cell(v, pct=True, width=14):
        if v is None:
            return f"{'-':>{width}}"
        f = 100 if pct else 1
        return f"{f * v['mean']:>{width - 6}.2f}±{f * v['std']:<5.2f}"

    print(f"\nmean ± std over {r['seeds']} base models (test split; sequences {r['orders']})")
    print(f"{'method':<13}{'step':>4}{'Acc_f':>14}{'Acc_r':>14}{'Acc_o':>14}{'H-Mean':>14}"
          f"{'seconds':>14}{'adapter KiB':>14}{'MIA gap':>14}")
    for spec in r["methods"]:
        for i, row in enumerate(r["table"][spec], 1):
            kib = None if row["adapter_bytes"] is None else {
                k: v / 1024 for k, v in row["adapter_bytes"].items() if k != "n"}
            print(f"{spec:<13}{i:>4}{cell(row['acc_f'])}{cell(row['acc_r'])}{cell(row['acc_o'])}"
                  f"{cell(row['h_mean'])}{cell(row['seconds'], False)}{cell(kib, False)}"
                  f"{cell(row['mia_gap'], False)}")


def supported(specs: list[str]) -> list[str]:
    """The specs this build can run; a clear error for the others."""
    from forgetting.methods import names

    known = names()

    bad = [s for s in specs if s != "retrain" and (parse(s)[0] not in known or (
        "@" in s and not s.endswith("@authors")))]
    if bad:
        raise SystemExit(f"unknown method(s) {', '.join(bad)}: choose from "
                         f"{', '.join((*known, 'retrain'))}; add :k for k shots, @authors for "
                         "the authors' profile")
    return specs


def run(args, cfg, splits, device) -> dict:
    specs = supported([s.strip() for s in args.methods.split(",") if s.strip()])
    result = compare(cfg, splits, device, Path(args.cache), specs, args.seeds, args.steps)
    print_table(result)
    return result
