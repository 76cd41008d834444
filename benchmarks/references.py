"""Does the never-seen reference give the retrain reference's verdicts? The agreement study
behind ``evidence.reference``.

    python benchmarks/references.py [--configs params.yaml,benchmarks/configs/fashion-mnist-small.yaml]
        [--seeds 5,5] [--requests 4,4] [--reference-classes 2]
        [--attacks identification,linear_probe,membership,relearning] [--json]

Per bench and seed s: ``--reference-classes`` classes drawn with seed s are set aside as
never-seen (``data.reference_classes``), a base model is pretrained without them
(``pretrain.seed = s``), and ``--requests`` one-class requests are drawn from the other
classes (seed 2000 + s). Each request starts from the base model and is judged on four models:
- GS-LoRA++ at the defaults (the candidate a user gets);
- the original model and a head-only change (the forgotten row of the head zeroed, the
  embedding untouched): positive controls, which a reference must flag as retaining more;
- the model retrained from scratch without the class: a negative control for the never-seen
  reference (it must not be flagged), and the retrain reference of the other three.
Every attack measures each model with the forgotten class's validation images as probes and,
for the never-seen verdict, the same model's figures on the reference classes (per class and
pooled, their spread joining the noise). Membership inference reads uncalibrated scores
(AUC) on both sides, so that the two references judge the same figure: the pipeline's
retrain reference calibrates it with reference models (LiRA) instead.

Verdicts are taken from the stored figures: against retrain by the pipeline's rule (a gap
beyond twice the noise), against the never-seen classes at ``NEVER_SEEN_NOISE`` times it (the
choice this study makes; the summary at 2 is kept beside it). Printed per bench and attack:
agreement of the never-seen verdict with the retrain verdict ("retains more" or not, the
decision the gates take) over the candidates and the positive controls; how often each
reference misses a positive control; how often the never-seen reference flags the retrained
model; and the seconds each reference costs per request beside the forgetting run. Every
request is cached, so an interrupted run resumes.

The partition reference (``--partition-size``): per base model, the classes a request may
name are split, seeded, into groups of that size, and one model per group is trained from
scratch without it, once: for a request on class c, the model of c's group is a model that
never saw c, with c's own difficulty, whatever the sequence of requests. It is judged by the
retrain reference's rule (a gap beyond twice the noise) and costs one pretraining per group
per dataset version instead of one per request: the pipeline's ``evidence.reference:
partition`` (the same groups, ``forgetting/evidence/partition.py``).
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
from common import dataset
from runs import Bench, bench_args, listed, retrain

from forgetting.config import load_config
from forgetting.datasets import reference_splits
from forgetting.evidence import ATTACKS, NeverSeen, measure
from forgetting.evidence.never_seen import NEVER_SEEN_NOISE
from forgetting.evidence.partition import groups
from forgetting.evidence.stats import Figure, passes, verdict
from forgetting.runtime import setup_runtime
from forgetting.train import forget_classes

CANDIDATES = ("gs-lora++", "original", "head-only")
CONTROLS = ("original", "head-only")


def head_only(model: torch.nn.Module, c: int) -> torch.nn.Module:
    """The original with class ``c``'s head row (weights and bias) zeroed: Acc_f falls, the
    embedding is the original's."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.head.parameters():
            if p.shape[0] == m.num_classes:
                p[c] = 0
    return m


def seeded_bench(config: str | None, seed: int, n_ref: int, cache: Path, device) -> Bench:
    """The bench with ``n_ref`` classes drawn by ``seed`` set aside as never-seen."""
    cfg = load_config(config)
    if device:
        cfg = cfg.model_copy(update={"device": device})
    names = list(dataset(cfg, cache)[1]["train"].info.class_names)
    drawn = sorted(names[i] for i in np.random.default_rng(seed).choice(len(names), n_ref,
                                                                          replace=False))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"reference_classes": drawn})})
    dev = setup_runtime(cfg)
    path, sp = dataset(cfg, cache)
    sp = {**sp, **reference_splits(path, cfg.model)}
    return Bench(Path(config).stem if config else "defaults", cfg, sp, cache, dev)


def request(bench: Bench, seed: int, c: int, attacks: tuple[str, ...],
            group: list[int] | None = None) -> dict:
    """Every model's figures (and the never-seen reference's) for one request, and, with
    ``group``, the partition model's (the model trained without c's group); cached."""
    path = bench.cache / "references-study" / f"{bench.key('never-seen', seed, c, attacks)}.json"
    if path.exists():  # a request measured before: add the partition model's figures if new
        out = json.loads(path.read_text())
        if group is not None and out.get("partition", {}).get("group") != [
                bench.names[k] for k in group]:
            out.update(partition_figures(bench, seed, c, group, attacks))
            path.write_text(json.dumps(out))
        return out
    cfg = bench.cfg.evidence.model_copy(update={"attacks": list(attacks)})
    ns = NeverSeen.of(bench.splits)
    train, val = bench.splits["train"], bench.splits["val"]
    base = bench.base(seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        fcfg = bench.cfg.forget.for_request(None, "gs-lora++", 0).model_copy(
            update={"seed": seed})
        cand = forget_classes(base, train, val, [c], fcfg, Path(work) / "adapter", bench.device,
                              progress=False).model
    forget_s = time.perf_counter() - t0
    ret, retrain_s = retrain(bench, seed, [c])
    models = {"gs-lora++": cand, "original": base, "head-only": head_only(base, c),
              "retrain": ret}
    out: dict = {"class": bench.names[c], "seconds": {"forget": forget_s}}
    figures, secs = {}, {}
    for who, m in models.items():
        t0 = time.perf_counter()
        plain = measure(m, train, val, [c], bench.device, cfg)
        t1 = time.perf_counter()
        joined = measure(m, train, val, [c], bench.device, cfg, never_seen=ns)
        secs[who] = (t1 - t0, time.perf_counter() - t1)
        figures[who] = {"plain": plain, "joined": joined}
    out["figures"] = {who: {"now": {a: f["joined"]["now"][a]["figure"] for a in attacks},
                            "plain": {a: f["plain"]["now"][a]["figure"] for a in attacks},
                            "never_seen": {a: f["joined"]["reference"][a] for a in attacks}}
                      for who, f in figures.items()}
    # the evidence of one request: the attacks on the parent and the candidate, and with the
    # retrain reference its training and its own attacks (reference models not counted)
    out["seconds"].update(
        retrain=retrain_s + secs["retrain"][0] + secs["original"][0] + secs["gs-lora++"][0],
        never_seen=secs["original"][1] + secs["gs-lora++"][1], retrain_training=retrain_s,
        attacks=secs["original"][0] + secs["gs-lora++"][0])
    if group is not None:
        out.update(partition_figures(bench, seed, c, group, attacks))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def partition_figures(bench: Bench, seed: int, c: int, group: list[int],
                      attacks: tuple[str, ...]) -> dict:
    """The partition model's figures on class c (the model of c's group; cached with the
    retrain references, so each group trains once per base model)."""
    cfg = bench.cfg.evidence.model_copy(update={"attacks": list(attacks)})
    model, train_s = retrain(bench, seed, group)
    t0 = time.perf_counter()
    fig = measure(model, bench.splits["train"], bench.splits["val"], [c], bench.device, cfg)
    return {"partition": {"group": [bench.names[k] for k in group], "training": train_s,
                          "measure": time.perf_counter() - t0,
                          "figures": {a: fig["now"][a]["figure"] for a in attacks}}}


def flagged(line: str) -> bool:
    return not passes(line)


def judged(r: dict, k: float) -> dict:
    """Every model's flags ("retains more") against retrain (the pipeline's rule) and against
    its never-seen classes with noise multiple ``k``, from the stored figures."""
    f, out = r["figures"], {}
    for who in f:
        out[who] = {"retrain": {}, "never-seen": {}}
        for a, fig in f[who]["plain"].items():
            low = a == "relearning"
            out[who]["retrain"][a] = flagged(verdict(
                Figure(**fig), Figure(**f["retrain"]["plain"][a]), a, low))
            out[who]["never-seen"][a] = flagged(verdict(
                Figure(**f[who]["now"][a]), Figure(**f[who]["never_seen"][a]["figure"]), a, low,
                "never-seen classes", k))
            if "partition" in r:
                out[who].setdefault("partition", {})[a] = flagged(verdict(
                    Figure(**fig), Figure(**r["partition"]["figures"][a]), a, low))
    return out


def summarise(rows: list[dict], attacks: tuple[str, ...], k: float,
              cheap: str = "never-seen") -> dict:
    """Per attack, of the ``cheap`` reference against retrain: agreement, missed positive
    controls, flagged negative controls (never-seen verdicts at noise multiple ``k``)."""
    out = {}
    flags = [judged(r, k) for r in rows]
    for a in attacks:
        pairs = [(v[w][cheap][a], v[w]["retrain"][a]) for v in flags for w in CANDIDATES]
        controls = [{kind: not v[w][kind][a] for kind in (cheap, "retrain")}
                    for v in flags for w in CONTROLS]
        cand = [(v["gs-lora++"][cheap][a], v["gs-lora++"]["retrain"][a]) for v in flags]
        out[a] = {
            "agreement": float(np.mean([n == t for n, t in pairs])),
            "agreement_candidate": float(np.mean([n == t for n, t in cand])),
            "candidate_flagged": {cheap: int(sum(n for n, _ in cand)),
                                  "retrain": int(sum(t for _, t in cand))},
            "missed_controls": {kind: int(sum(c[kind] for c in controls))
                                for kind in (cheap, "retrain")},
            "controls": len(controls),
            f"retrain_flagged_by_{cheap.replace('-', '_')}": int(sum(
                v["retrain"][cheap][a] for v in flags)),
            "pairs": len(pairs)}
    return out


def study(config: str | None, seeds: int, per_seed: int, n_ref: int, cache: Path, device,
          attacks: tuple[str, ...], part: int = 0) -> dict:
    rows, seconds, n_groups = [], [], []
    for s in range(seeds):
        bench = seeded_bench(config, s, n_ref, cache, device)
        ref = set(bench.cfg.data.reference_classes)
        pool = [i for i, n in enumerate(bench.names) if n not in ref]
        picks = np.random.default_rng(2000 + s).choice(pool, per_seed, replace=False)
        parts = groups(pool, s, part) if part else []  # the pipeline's, pretrain.seed = s
        n_groups.append(len(parts))
        for c in sorted(int(x) for x in picks):
            r = request(bench, s, c, attacks, next((g for g in parts if c in g), None))
            rows.append({**{k: v for k, v in r.items() if k != "verdicts"}, "seed": s,
                         "reference_classes": sorted(ref)})
            seconds.append(r["seconds"])
            v = judged(r, NEVER_SEEN_NOISE)
            print(f"  seed {s} {r['class']}: identification flagged by retrain / never-seen: "
                  + ", ".join(f"{w} " + "/".join("R" if v[w][kind]["identification"] else "-"
                                                 for kind in ("retrain", "never-seen"))
                              for w in (*CANDIDATES, "retrain")), flush=True)
    cost = {k: float(np.mean([s[k] for s in seconds])) for k in ("forget", "retrain",
                                                                 "never_seen",
                                                                 "retrain_training")}
    out = {"requests": rows, "seconds": cost, "reference_classes": n_ref, "seeds": seeds,
           "noise_multiple": NEVER_SEEN_NOISE,
           "summary": summarise(rows, attacks, NEVER_SEEN_NOISE),
           "summary_at_2": summarise(rows, attacks, 2.0)}
    if part:
        out["partition"] = {
            "size": part, "models_per_base": float(np.mean(n_groups)),
            "seconds_per_model": seconds_per_model(rows),
            "summary": summarise(rows, attacks, NEVER_SEEN_NOISE, "partition")}
        if (cost := partition_cost(rows, part)) is not None:
            out["partition"]["evidence_per_request"] = cost
    return out


def seconds_per_model(rows: list[dict]) -> float:
    """A group model's training seconds: each group counted once per base model, however
    many requests it judged."""
    trained = {(r["seed"], tuple(r["partition"]["group"])): r["partition"]["training"]
               for r in rows}
    return float(np.mean(list(trained.values())))


def partition_cost(rows: list[dict], part: int) -> float | None:
    """Seconds of a request's evidence with the partition reference: the attacks on the parent
    and the candidate, the group model's on the class, and the request's share of the groups'
    training if every class a request may name is asked for once (rows measured before the
    attacks' seconds were kept apart: none)."""
    if not all("attacks" in r["seconds"] and "measure" in r["partition"] for r in rows):
        return None
    return (seconds_per_model(rows) / part
            + float(np.mean([r["seconds"]["attacks"] + r["partition"]["measure"] for r in rows])))


def print_summary(name: str, res: dict) -> None:
    c = res["seconds"]
    print(f"\n{name}: {len(res['requests'])} requests; seconds per request: forgetting "
          f"{c['forget']:.0f}, retrain reference {c['retrain']:.0f} "
          f"({c['retrain'] / c['forget']:.1f}x), never-seen {c['never_seen']:.1f} "
          f"({c['never_seen'] / c['forget']:.2f}x)")
    print("attack | agreement | agreement on GS-LoRA++ | missed controls never-seen / retrain "
          "| retrain model flagged by never-seen")
    for a, s in res["summary"].items():
        print(f"{a} | {s['agreement']:.2f} ({s['pairs']}) | {s['agreement_candidate']:.2f} | "
              f"{s['missed_controls']['never-seen']}/{s['controls']} / "
              f"{s['missed_controls']['retrain']}/{s['controls']} | "
              f"{s['retrain_flagged_by_never_seen']}/{len(res['requests'])}")
    if "partition" in res:
        p = res["partition"]
        print(f"partition reference: groups of {p['size']}, {p['models_per_base']:.0f} models "
              f"per base model, {p['seconds_per_model']:.0f} s each, once")
        for a, s in p["summary"].items():
            print(f"{a} | {s['agreement']:.2f} ({s['pairs']}) | "
                  f"{s['agreement_candidate']:.2f} | "
                  f"{s['missed_controls']['partition']}/{s['controls']} | "
                  f"{s['retrain_flagged_by_partition']}/{len(res['requests'])}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="4,4", help="one-class requests per base model")
    ap.add_argument("--reference-classes", type=int, default=2)
    ap.add_argument("--partition-size", type=int, default=2,
                    help="classes per partition model (0: no partition reference); 2 is the "
                         "recorded run whose request records the results file keeps, the "
                         "pipeline's default (evidence.partition_size) is recorded beside it")
    bench_args(ap, "5,5", "base models per config", ATTACKS)
    args = ap.parse_args(argv)
    configs, seeds, per = listed(args.configs), listed(args.seeds, int), listed(args.requests, int)
    if not len(seeds) == len(per) == len(configs):
        ap.error("--seeds and --requests need one count per config")
    attacks = tuple(listed(args.attacks))
    result: dict = {"configs": configs, "attacks": list(attacks), "benches": {}}
    for config, n, k in zip(configs, seeds, per, strict=True):
        name = Path(config).stem
        res = study(config, n, k, args.reference_classes, Path(args.cache), args.device,
                    attacks, args.partition_size)
        result["benches"][name] = res
        result.update(threads=torch.get_num_threads())
        print_summary(name, res)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
