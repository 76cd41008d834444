"""The evidence attacks on the five-request sequence: each method against the retrain reference.

    python benchmarks/evidence.py [--steps 5] [--retrain-seeds 2] [--methods gs-lora++,fg-oriu]
                                  [--json]

On the embedded digits (the model of params.yaml), forgets one class per step with each of
``--methods`` (full data; GS-LoRA++ by default), each step on the model that method's previous
steps left, and at every step retrains from
scratch without every class forgotten so far, with ``--retrain-seeds`` seeds (pooled: the
verdict's noise holds their spread). Each attack of ``forgetting.evidence`` runs on this
step's class and on every class forgotten so far, for: each method, the retrain reference, the
original model (which forgot nothing: each attack should flag it) and a head-only change
(the original with the forgotten classes' head rows zeroed: Acc_f 0, embedding untouched).
Figures carry their noise (bootstrap over images; relearning: over draws of its images). Also
the seconds each attack costs per model, and the one-time cost of the membership reference
models. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import base_model, sequence_setup

from forgetting.evaluate import evaluate
from forgetting.evidence import TITLES, measure, pooled, train_references, verdicts
from forgetting.pretrain import retrain_baseline
from forgetting.report import figure_text
from forgetting.train import forget_classes

CONTROLS = ("original", "head_only")


def head_only(model, classes: list[int]):
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.head.weight[classes] = 0
        if getattr(m.head, "bias", None) is not None:
            m.head.bias[classes] = 0
    return m


def _accs(model, test, c: int, earlier: list[int], device, names) -> dict:
    m = evaluate(model, test, [c], earlier, device=device, class_names=names)
    return {"acc_f": m.acc_f, "acc_r": m.acc_r, "acc_o": m.acc_o}


def run(cfg, splits, base, device, steps: list[int], seeds: int,
        methods: tuple[str, ...] = ("gs-lora++",)) -> dict:
    names = splits["train"].info.class_names
    train, heldout, ev = splits["train"], splits["val"].joined(splits["test"]), cfg.evidence
    t0 = time.perf_counter()
    refs = train_references(cfg.model, len(names), train, splits["val"], heldout, cfg.pretrain,
                            device, ev.reference_models, ev.reference_epochs)
    ref_seconds = time.perf_counter() - t0
    current, earlier, rows = dict.fromkeys(methods, base), [], []
    with tempfile.TemporaryDirectory() as work:
        for i, c in enumerate(steps, 1):
            so_far = earlier + [c]
            forget_s = {}
            for m in methods:  # each method's chain builds on its own previous step
                t0 = time.perf_counter()
                current[m] = forget_classes(
                    current[m], train, splits["val"], [c],
                    cfg.forget.for_request(None, m, i - 1), Path(work) / f"{m}-{i}", device,
                    earlier=earlier, progress=False).model
                forget_s[m] = time.perf_counter() - t0
            retrains, retrain_s = [], []
            for s in range(seeds):
                r = retrain_baseline(cfg.model, len(names), train, splits["val"],
                                     cfg.pretrain.model_copy(update={"seed": s}), device,
                                     [k for k in range(len(names)) if k not in so_far],
                                     progress=False)
                retrains.append(r.model)
                retrain_s.append(r.seconds)
            models = {**current, "original": base, "head_only": head_only(base, so_far)}
            figs = {k: measure(m, train, heldout, [c], device, ev, refs, so_far=so_far)
                    for k, m in models.items()}
            ref = pooled([measure(m, train, heldout, [c], device, ev, refs, so_far=so_far)
                          for m in retrains])
            row = {"step": i, "classes": [names[c]], "forget_seconds": forget_s,
                   "retrain_seconds": retrain_s,
                   "accuracy": {k: _accs(m, splits["test"], c, earlier, device, names)
                                for k, m in {**models, "retrain": retrains[0]}.items()},
                   "figures": {k: {scope: {a: r[scope][a]["figure"] for a in r[scope]}
                                   for scope in ("now", "so_far")}
                               for k, r in {**figs, "retrain": ref}.items()},
                   "details": {k: {a: {kk: vv for kk, vv in r["now"][a].items()
                                       if kk != "figure"} for a in r["now"]}
                               for k, r in {**figs, "retrain": ref}.items()},
                   "verdicts": {k: verdicts(r, ref) for k, r in figs.items()},
                   "seconds": {k: r["seconds"] for k, r in figs.items()}}
            rows.append(row)
            print_step(row, methods, flush=True)
            earlier = so_far
    seconds = {a: float(np.mean([r["seconds"][m][a] for r in rows for m in (*methods, *CONTROLS)]))
               for a in ("outputs", *ev.attacks)}
    return {"steps": rows, "reference_models_seconds": ref_seconds,
            "reference_models": ev.reference_models, "reference_epochs": ev.reference_epochs,
            "retrain_seeds": seeds, "attack_seconds_per_model": seconds,
            "attacks_seconds_per_request": 3 * sum(seconds.values()),  # parent, candidate, retrain
            "methods": list(methods), "summary": summary(rows, (*methods, *CONTROLS))}


def summary(rows: list[dict], models: tuple[str, ...]) -> dict:
    """Per model and attack: how many steps' verdicts were indistinguishable / retains more,
    on this step's class and on every class so far."""
    out: dict = {}
    for m in models:
        for scope in ("now", "so_far"):
            for a in TITLES:
                lines = [r["verdicts"][m].get(scope, {}).get(a) for r in rows]
                lines = [x for x in lines if x]
                if lines:
                    out.setdefault(m, {}).setdefault(scope, {})[a] = {
                        "indistinguishable": sum(x.startswith("indistinguishable") for x in lines),
                        "retains_more": sum(x.startswith("retains more") for x in lines),
                        "below": sum(x.startswith("below") for x in lines), "steps": len(lines)}
    return out


def print_step(row: dict, methods: tuple[str, ...], flush: bool = False) -> None:
    rt = row["accuracy"]["retrain"]
    accs = []
    for m in methods:
        g = row["accuracy"][m]
        acc_o = "-" if g["acc_o"] is None else f"{100 * g['acc_o']:.1f}"
        accs.append(f"{m} Acc_f {100 * g['acc_f']:.1f} Acc_r {100 * g['acc_r']:.1f} "
                    f"Acc_o {acc_o}")
    print(f"\nstep {row['step']} ({row['classes'][0]}): {'; '.join(accs)} | retrain Acc_r "
          f"{100 * rt['acc_r']:.1f}", flush=flush)
    cols = (*methods, "retrain", *CONTROLS)
    for scope, label in (("now", "this step's class"), ("so_far", "every class so far")):
        if not row["figures"][methods[0]].get(scope):
            continue
        print(f"  {label}: {'attack':<46}" + "".join(f"{m:>16}" for m in cols)
              + "  verdicts (" + ", ".join(methods) + ")")
        for a in row["figures"][methods[0]][scope]:
            lines = ", ".join(row["verdicts"][m][scope][a].split(":")[0] for m in methods)
            print(f"    {TITLES[a]:<63}"
                  + "".join(f"{figure_text(row['figures'][m][scope].get(a)):>16}" for m in cols)
                  + f"  {lines}", flush=flush)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain-seeds", type=int, default=2,
                    help="retrain references per step (2+: their spread joins the noise)")
    ap.add_argument("--methods", default="gs-lora++", help="comma-separated (forgetting.methods)")
    args, cfg, device, _, splits = sequence_setup(ap, argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    from forgetting.methods import names as method_names

    if not methods or any(m not in method_names() for m in methods):
        ap.error(f"--methods: choose from {', '.join(method_names())}")
    base, _, _ = base_model(cfg, Path(args.cache), splits, device)
    result = {"device": str(device), "threads": torch.get_num_threads(),
              **run(cfg, splits, base, device, list(range(args.steps)), args.retrain_seeds,
                    methods)}
    s = result["attack_seconds_per_model"]
    print(f"\nseconds per model: {', '.join(f'{k} {v:.2f}' for k, v in s.items())}; per "
          f"request (parent, candidate, retrain): {result['attacks_seconds_per_request']:.1f} s; "
          f"reference models (once per dataset version): "
          f"{result['reference_models_seconds']:.0f} s")
    for m, scopes in result["summary"].items():
        for scope, per in scopes.items():
            print(f"{m:<10} {scope:<7} " + "; ".join(
                f"{a}: {v['indistinguishable']}/{v['steps']} indistinguishable, "
                f"{v['retains_more']} retains more" for a, v in per.items()))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
