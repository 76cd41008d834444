"""Request sequences on cached base models, measured on one split with the evidence probes: the
pieces ``tune.py``, ``methods.py`` and ``evidence.py`` share.

A *bench* is one dataset config (``params.yaml`` for the digits,
``benchmarks/configs/fashion-mnist-small.yaml``). Seed s of a bench pretrains a base model with
``pretrain.seed = s``, draws the classes to forget (seed 0: the first ``steps`` classes, the
README's sequence; others: a seeded permutation) and seeds the forgetting. Base models, retrain
references (one per seed and step: a fresh model without every class forgotten so far) and
finished sequences are cached under ``--cache`` by everything they depend on, so a choice made
on the validation split and the report on the test split train each model once, and an
interrupted run resumes.

Each step's row: Acc_f, Acc_r, Acc_o, H-Mean, seconds, adapter bytes and, with evidence, the
figures (value, standard error) of the attacks asked for (``forgetting/evidence/``) on every
class forgotten so far, images of ``split`` as the held-out ones, the training images as the
gallery (and the members).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import base_model, dataset, unchanged

from forgetting.config import Config, load_config
from forgetting.evaluate import evaluate
from forgetting.evidence import References, measure, train_references
from forgetting.model import load_checkpoint, save_checkpoint
from forgetting.pretrain import retrain_baseline
from forgetting.runtime import setup_runtime
from forgetting.train import forget_classes

PROBES = ("identification", "linear_probe")  # what the choice on val reads
ATTACKS = ("identification", "linear_probe", "membership", "relearning")  # the report's


@dataclass
class Bench:
    """One benchmark dataset: its config, splits, cache folder and device."""

    name: str
    cfg: Config
    splits: dict
    cache: Path
    device: torch.device

    @property
    def names(self) -> tuple[str, ...]:
        return self.splits["train"].info.class_names

    def seeded(self, seed: int) -> Config:
        return self.cfg.model_copy(update={"pretrain": self.cfg.pretrain.model_copy(
            update={"seed": seed})})

    def base(self, seed: int):
        return base_model(self.seeded(seed), self.cache, self.splits, self.device)[0]

    def order(self, seed: int, steps: int) -> list[int]:
        if seed == 0:
            return list(range(steps))
        return [int(c) for c in np.random.default_rng(seed).permutation(len(self.names))[:steps]]

    def key(self, *parts) -> str:
        """A cache key over this bench's data, model and pretraining config and ``parts``."""
        blob = json.dumps([self.cfg.data.model_dump(mode="json", exclude=unchanged(self.cfg.data)),
                           self.cfg.model.model_dump(mode="json",
                                                     exclude=unchanged(self.cfg.model)),
                           self.cfg.pretrain.model_dump(mode="json"), self.cfg.threads,
                           self.cfg.deterministic, *parts], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bench_args(ap: argparse.ArgumentParser, seeds: str, seeds_help: str,
               attacks: tuple[str, ...] = ATTACKS) -> None:
    """The options of the benchmarks that run on several benches: --configs, --seeds (one
    count per config), --attacks (in the order given: it is part of their cache keys),
    --cache, --device, --json."""
    ap.add_argument("--configs", default="params.yaml,benchmarks/configs/fashion-mnist-small.yaml")
    ap.add_argument("--seeds", default=seeds, help=seeds_help)
    ap.add_argument("--attacks", default=",".join(attacks))
    ap.add_argument("--cache", default=".forgetting/bench-cache")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")


def listed(text: str, kind: type = str) -> list:
    """A comma-separated option as a list."""
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def load(config: str | None, cache: str | Path, device: str | None = None) -> Bench:
    cfg = load_config(config)
    if device:
        cfg = cfg.model_copy(update={"device": device})
    dev = setup_runtime(cfg)
    path, splits = dataset(cfg, Path(cache))
    return Bench(Path(config).stem if config else "defaults", cfg, splits, Path(cache), dev)


def retrain(bench: Bench, seed: int, gone: list[int]):
    """(model, seconds) of the reference retrained from scratch without ``gone`` (cached; its
    seconds are those of the run that trained it)."""
    path = bench.cache / "retrain" / f"{bench.key('retrain', seed, sorted(gone))}.safetensors"
    if path.exists():
        model, _, extra = load_checkpoint(path)
        return model.to(bench.device), extra.get("seconds", 0.0)
    res = retrain_baseline(bench.cfg.model, len(bench.names), bench.splits["train"],
                           bench.splits["val"], bench.seeded(seed).pretrain, bench.device,
                           [k for k in range(len(bench.names)) if k not in gone], progress=False)
    save_checkpoint(res.model, path, bench.names, extra={"seconds": res.seconds})
    return res.model, res.seconds


def references(bench: Bench, split: str) -> References:
    """The membership attack's reference models (``evidence.reference_models``, trained once
    per bench), with ``split`` as their held-out images; cached."""
    ev = bench.cfg.evidence
    key = bench.key("references", split, ev.reference_models, ev.reference_epochs)
    path = bench.cache / "references" / f"{key}.npz"
    if path.exists():
        return References.load(path)
    refs = train_references(bench.cfg.model, len(bench.names), bench.splits["train"],
                            bench.splits["val"], bench.splits[split], bench.cfg.pretrain,
                            bench.device, ev.reference_models, ev.reference_epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    refs.save(path)
    return refs


def evidence(bench: Bench, model, c: int, earlier: list[int], split: str,
             attacks: tuple[str, ...]) -> dict:
    """Each attack's figure ({"value", "se"}): on every class forgotten so far (this request's
    class only for relearning, which fine-tunes per request), ``split`` the held-out images."""
    cfg = bench.cfg.evidence.model_copy(update={"attacks": list(attacks)})
    refs = references(bench, split) if "membership" in attacks else None
    got = measure(model, bench.splits["train"], bench.splits[split], [c], bench.device, cfg,
                  refs, so_far=earlier + [c])
    return {a: (got["so_far"].get(a) or got["now"][a])["figure"] for a in attacks}


def _row(bench: Bench, model, step: int, c: int, earlier: list[int], split: str,
         acc_f_before: float | None, attacks: tuple[str, ...]) -> dict:
    m = evaluate(model, bench.splits[split], [c], earlier, acc_f_before=acc_f_before,
                 device=bench.device, class_names=bench.names)
    row = {"step": step, "class": bench.names[c], "acc_f": m.acc_f, "acc_r": m.acc_r,
           "acc_o": m.acc_o, "h_mean": m.h_mean}
    if attacks:
        row["evidence"] = evidence(bench, model, c, earlier, split, attacks)
    return row


def _cached(bench: Bench, key: str, compute) -> list[dict]:
    path = bench.cache / "runs" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    rows = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return rows


def reference_rows(bench: Bench, seed: int, order: list[int], split: str,
                   attacks: tuple[str, ...] = PROBES) -> list[dict]:
    """The retrain reference at every step of the sequence, measured on ``split``."""
    def compute():
        base, rows = bench.base(seed), []
        for i, c in enumerate(order, 1):
            gone = order[:i]
            before = evaluate(base, bench.splits[split], [c], gone[:-1], device=bench.device,
                              class_names=bench.names)
            model, seconds = retrain(bench, seed, gone)
            rows.append({**_row(bench, model, i, c, gone[:-1], split, before.acc_f, attacks),
                         "seconds": seconds, "adapter_bytes": None})
        return rows
    return _cached(bench, bench.key("reference", seed, order, split, attacks), compute)


def method_rows(bench: Bench, forget_cfg, method: str, shots: int | None, seed: int,
                order: list[int], split: str, attacks: tuple[str, ...] = PROBES,
                tag: str | None = None) -> list[dict]:
    """One method's sequence with ``forget_cfg`` (a ``ForgetConfig``), measured on ``split``:
    request i builds on the model request i-1 left. ``tag``: what else tells this run apart
    in the cache (code swapped in by a benchmark)."""
    def compute():
        base = bench.base(seed)
        model, earlier, rows = base, [], []
        with tempfile.TemporaryDirectory() as work:
            for i, c in enumerate(order, 1):
                before = evaluate(model, bench.splits[split], [c], earlier, device=bench.device,
                                  class_names=bench.names)
                fcfg = forget_cfg.for_request(shots, method, i - 1).model_copy(
                    update={"seed": seed})
                t0 = time.perf_counter()
                res = forget_classes(model, bench.splits["train"], bench.splits["val"], [c],
                                     fcfg, Path(work) / f"step-{i}", bench.device,
                                     earlier=earlier, progress=False, base=base)
                seconds = time.perf_counter() - t0
                rows.append({**_row(bench, res.model, i, c, earlier, split, before.acc_f,
                                    attacks),
                             "seconds": seconds, "adapter_bytes": res.adapter_bytes})
                model, earlier = res.model, earlier + [c]
        return rows
    key = bench.key("method", forget_cfg.model_dump(mode="json"), method, shots, seed, order,
                    split, attacks, *([tag] if tag else []))
    return _cached(bench, key, compute)


def evidence_verdict(runs: list[list[dict]], refs: list[list[dict]], step: int,
                     attack: str) -> dict:
    """A method against retrain on one attack at ``step`` (1-based), over seeds: the mean
    paired gap (method - retrain, higher: the method still holds more) and its noise, twice
    the standard error of that mean (the larger of the seeds' spread and the images' own
    bootstrap noise). ``verdict``: "retains more", "below" or "indistinguishable"."""
    got = [r[step - 1]["evidence"][attack] for r in runs]
    ref = [r[step - 1]["evidence"][attack] for r in refs]
    gaps = np.array([g["value"] - f["value"] for g, f in zip(got, ref, strict=True)])
    n = len(gaps)
    images = np.mean([(g["se"] or 0) ** 2 + (f["se"] or 0) ** 2 for g, f in zip(got, ref,
                                                                               strict=True)])
    spread = float(np.var(gaps, ddof=1)) if n > 1 else 0.0
    noise = 2 * float(np.sqrt(max(spread, images) / n))
    gap = float(gaps.mean())
    verdict = ("retains more" if gap > noise else "below" if gap < -noise
               else "indistinguishable")
    return {"gap": gap, "noise": noise, "method": float(np.mean([g["value"] for g in got])),
            "retrain": float(np.mean([f["value"] for f in ref])), "verdict": verdict}
