"""The evidence attacks on the five-request sequence: GS-LoRA++ against the retrain reference.

    python benchmarks/evidence.py [--steps 5] [--retrain-seeds 2] [--json]

On the embedded digits (the model of params.yaml), forgets one class per step with GS-LoRA++
(full data), each step on the model the previous steps left, and at every step retrains from
scratch without every class forgotten so far, with ``--retrain-seeds`` seeds (pooled: the
verdict's noise holds their spread). Each attack of ``forgetting.evidence`` runs on this
step's class and on every class forgotten so far, for: GS-LoRA++, the retrain reference, the
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

MODELS = ("gs-lora++", "original", "head_only")


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


def run(cfg, splits, base, device, steps: list[int], seeds: int) -> dict:
    names = splits["train"].info.class_names
    train, heldout, ev = splits["train"], splits["val"].joined(splits["test"]), cfg.evidence
    t0 = time.perf_counter()
    refs = train_references(cfg.model, len(names), train, splits["val"], heldout, cfg.pretrain,
                            device, ev.reference_models, ev.reference_epochs)
    ref_seconds = time.perf_counter() - t0
    model, earlier, rows = base, [], []
    with tempfile.TemporaryDirectory() as work:
        for i, c in enumerate(steps, 1):
            so_far = earlier + [c]
            t0 = time.perf_counter()
            res = forget_classes(model, train, splits["val"], [c], cfg.forget.for_request(None),
                                 Path(work) / f"step-{i}", device, earlier=earlier,
                                 progress=False)
            forget_s = time.perf_counter() - t0
            retrains, retrain_s = [], []
            for s in range(seeds):
                r = retrain_baseline(cfg.model, len(names), train, splits["val"],
                                     cfg.pretrain.model_copy(update={"seed": s}), device,
                                     [k for k in range(len(names)) if k not in so_far],
                                     progress=False)
                retrains.append(r.model)
                retrain_s.append(r.seconds)
            models = {"gs-lora++": res.model, "original": base,
                      "head_only": head_only(base, so_far)}
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
            print_step(row, flush=True)
            model, earlier = res.model, so_far
    seconds = {a: float(np.mean([r["seconds"][m][a] for r in rows for m in MODELS]))
               for a in ("outputs", *ev.attacks)}
    return {"steps": rows, "reference_models_seconds": ref_seconds,
            "reference_models": ev.reference_models, "reference_epochs": ev.reference_epochs,
            "retrain_seeds": seeds, "attack_seconds_per_model": seconds,
            "attacks_seconds_per_request": 3 * sum(seconds.values()),  # parent, candidate, retrain
            "summary": summary(rows)}


def summary(rows: list[dict]) -> dict:
    """Per model and attack: how many steps' verdicts were indistinguishable / retains more,
    on this step's class and on every class so far."""
    out: dict = {}
    for m in MODELS:
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


def print_step(row: dict, flush: bool = False) -> None:
    g, rt = row["accuracy"]["gs-lora++"], row["accuracy"]["retrain"]
    acc_o = "-" if g["acc_o"] is None else f"{100 * g['acc_o']:.1f}"
    print(f"\nstep {row['step']} ({row['classes'][0]}): GS-LoRA++ Acc_f {100 * g['acc_f']:.1f} "
          f"Acc_r {100 * g['acc_r']:.1f} Acc_o {acc_o} | retrain Acc_r {100 * rt['acc_r']:.1f}",
          flush=flush)
    for scope, label in (("now", "this step's class"), ("so_far", "every class so far")):
        if not row["figures"]["gs-lora++"].get(scope):
            continue
        print(f"  {label}: {'attack':<46}{'GS-LoRA++':>16}{'retrain':>16}{'original':>16}"
              f"{'head-only':>16}  verdict (GS-LoRA++)")
        for a in row["figures"]["gs-lora++"][scope]:
            line = row["verdicts"]["gs-lora++"][scope][a].split(":")[0]
            print(f"    {TITLES[a]:<63}"
                  + "".join(f"{figure_text(row['figures'][m][scope].get(a)):>16}"
                            for m in ("gs-lora++", "retrain", "original", "head_only"))
                  + f"  {line}", flush=flush)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain-seeds", type=int, default=2,
                    help="retrain references per step (2+: their spread joins the noise)")
    args, cfg, device, _, splits = sequence_setup(ap, argv)
    base, _, _ = base_model(cfg, Path(args.cache), splits, device)
    result = {"device": str(device), "threads": torch.get_num_threads(),
              **run(cfg, splits, base, device, list(range(args.steps)), args.retrain_seeds)}
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
