"""Every method on the same request sequences, over several fresh base models, on every bench:
the methods and evidence tables, measured once on the test split with the defaults chosen on
validation (``benchmarks/tune.py``).

    python benchmarks/methods.py [--methods gs-lora,gs-lora++,gs-lora++:4,fg-oriu,finetune,neggrad]
        [--configs params.yaml,benchmarks/configs/fashion-mnist-small.yaml] [--seeds 5,3]
        [--steps 5] [--attacks identification,linear_probe,membership,relearning] [--json]

A method spec is ``name[:k][@authors]`` (``k`` images per class; ``@authors``: the authors'
profile). Each runs the sequences of ``benchmarks/runs.py`` (seed s: base model s, class order
s), one class per step, each step on the model its previous steps left; the retrain reference
of every seed and step is the row ``retrain``. Per bench, method and step: Acc_f, Acc_r,
Acc_o, H-Mean, seconds, adapter bytes, each attack's figure, as mean ± std over seeds, and
the evidence verdict against retrain (``runs.evidence_verdict``: the paired gap over seeds
against twice its standard error).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from runs import (
    Bench,
    bench_args,
    evidence_verdict,
    listed,
    load,
    method_rows,
    reference_rows,
)

KEYS = ("acc_f", "acc_r", "acc_o", "h_mean", "seconds", "adapter_bytes")


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


def summarise(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every key and attack (None where not
    measured)."""
    out = {}
    for k in KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = _stat(vals)
    attacks = sorted({a for r in rows for a in r.get("evidence", {})})
    out["evidence"] = {a: _stat([r["evidence"][a]["value"] for r in rows]) for a in attacks}
    return out


def _stat(vals: list[float]) -> dict | None:
    if not vals:
        return None
    return {"mean": float(np.mean(vals)),
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}


def compare(bench: Bench, specs: list[str], seeds: int, steps: int,
            attacks: tuple[str, ...]) -> dict:
    orders = [bench.order(s, steps) for s in range(seeds)]
    refs = [reference_rows(bench, s, orders[s], "test", attacks) for s in range(seeds)]
    runs: dict[str, list[list[dict]]] = {}
    for spec in specs:
        if spec == "retrain":
            runs[spec] = refs
            continue
        name, shots = parse(spec)
        fcfg = profiled(bench.cfg, spec).forget
        runs[spec] = [method_rows(bench, fcfg, name, shots, s, orders[s], "test", attacks)
                      for s in range(seeds)]
        last = [r[-1] for r in runs[spec]]
        print(f"{bench.name} {spec:<16} step {steps}: Acc_r "
              f"{100 * np.mean([r['acc_r'] for r in last]):.2f} Acc_f "
              f"{100 * np.mean([r['acc_f'] for r in last]):.2f}", flush=True)
    table = {spec: [summarise([r[i] for r in per_seed]) for i in range(steps)]
             for spec, per_seed in runs.items()}
    verdicts = {spec: {a: [evidence_verdict(per_seed, refs, i + 1, a) for i in range(steps)]
                       for a in attacks}
                for spec, per_seed in runs.items() if spec != "retrain"}
    return {"seeds": seeds, "steps": steps, "attacks": list(attacks),
            "orders": [[bench.names[c] for c in o] for o in orders],
            "table": table, "verdicts": verdicts, "runs": runs}


def print_table(name: str, r: dict) -> None:
    def cell(v, pct=True, width=14):
        if v is None:
            return f"{'-':>{width}}"
        f = 100 if pct else 1
        return f"{f * v['mean']:>{width - 6}.2f}±{f * v['std']:<5.2f}"

    print(f"\n{name}: mean ± std over {r['seeds']} base models (test split; sequences "
          f"{r['orders']})")
    print(f"{'method':<17}{'step':>4}{'Acc_f':>14}{'Acc_r':>14}{'Acc_o':>14}{'H-Mean':>14}"
          f"{'seconds':>14}" + "".join(f"{a[:12]:>14}" for a in r["attacks"]))
    for spec, per_step in r["table"].items():
        for i, row in enumerate(per_step, 1):
            ev = "".join(cell(row["evidence"].get(a), False) for a in r["attacks"])
            print(f"{spec:<17}{i:>4}{cell(row['acc_f'])}{cell(row['acc_r'])}{cell(row['acc_o'])}"
                  f"{cell(row['h_mean'])}{cell(row['seconds'], False)}{ev}")
    for spec, per in r["verdicts"].items():
        last = ", ".join(f"{a} {v[-1]['verdict']} ({v[-1]['gap']:+.3f} ± {v[-1]['noise']:.3f})"
                         for a, v in per.items())
        print(f"{spec} at step {r['steps']} against retrain: {last}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="gs-lora,gs-lora++,gs-lora++:4,fg-oriu,finetune,"
                                          "neggrad,retrain")
    ap.add_argument("--steps", type=int, default=5)
    bench_args(ap, "5,3", "base models and class orders per config")
    args = ap.parse_args(argv)
    specs = supported(listed(args.methods))
    configs, seeds = listed(args.configs), listed(args.seeds, int)
    if len(seeds) != len(configs):
        ap.error("--seeds needs one count per config")
    attacks = tuple(listed(args.attacks))
    result = {"methods": specs, "configs": configs, "benches": {}}
    for config, n in zip(configs, seeds, strict=True):
        bench = load(config, args.cache, args.device)
        result.update(device=str(bench.device), threads=torch.get_num_threads())
        result["benches"][bench.name] = compare(bench, specs, n, args.steps, attacks)
        print_table(bench.name, result["benches"][bench.name])
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
