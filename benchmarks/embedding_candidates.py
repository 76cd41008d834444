"""The feature-level forgetting terms that were measured before the embedding terms of
``forgetting/methods/embedding.py`` were written: each candidate on the digits' validation
split, five one-class requests on three base models, against the retrain reference.

    python benchmarks/embedding_candidates.py [--seeds 3] [--json]

Each candidate replaces the embedding terms of GS-LoRA++ (``forget.embedding``) for the run;
the losing ones live here, not in the library. Per candidate and step: val Acc_r, and k-NN
identification and the linear probe on every class forgotten so far (mean over the seeds,
beside retrain's). Records ``benchmarks/results/embedding.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from runs import load, method_rows, reference_rows

from forgetting import train
from forgetting.evaluate import collect_outputs
from forgetting.methods.embedding import EmbeddingForgetting, uniformity
from forgetting.runtime import autocast


class Candidate(EmbeddingForgetting):
    """A candidate term of weight ``W`` over the forgotten images of the batch (and the
    retained-embedding distillation of ``forget.embedding.keep_retained`` when set)."""

    W = 1.0

    def __init__(self, setup) -> None:
        super().__init__(setup)
        self.setup = setup

    def candidate(self, b, f_gone, y_gone, parent) -> torch.Tensor:
        raise NotImplementedError

    def terms(self, b):
        with torch.no_grad(), autocast(b.x.device):
            parent = self.parent.embed(b.x).float()
        out = {"candidate": self.W * self.candidate(b, b.feats[b.n_r:],
                                                    torch.cat([b.y_f, b.y_o]), parent)}
        if self.cfg.keep_retained > 0 and b.n_r:
            out["keep_retained"] = self.cfg.keep_retained * (
                1 - F.cosine_similarity(b.f_r, parent[:b.n_r], dim=1)).mean()
        return out


class NearestImage(Candidate):
    """Pull each forgotten image toward the parent's embedding of its nearest retained
    training image (a retrained model maps it near what it resembles)."""

    def __init__(self, setup) -> None:
        super().__init__(setup)
        out = collect_outputs(setup.model, setup.data.retained, setup.device,
                              want_features=True)
        self.bank = F.normalize(out["features"], dim=1).to(setup.device)

    def candidate(self, b, f_gone, y_gone, parent):
        p = F.normalize(parent[b.n_r:], dim=1)
        target = self.bank[(p @ self.bank.T).argmax(1)]
        return (1 - (F.normalize(f_gone, dim=1) * target).sum(1)).mean()


class Resemble(Candidate):
    """Pull toward the mix of retained prototypes the parent's retained-class softmax gives."""

    def __init__(self, setup) -> None:
        super().__init__(setup)
        out = collect_outputs(setup.model, setup.data.retained, setup.device,
                              want_features=True)
        n = setup.num_classes
        sums = torch.zeros(n, out["features"].shape[1]).index_add_(0, out["labels"],
                                                                   out["features"])
        counts = torch.bincount(out["labels"], minlength=n).clamp(min=1)
        self.protos = F.normalize(sums / counts[:, None], dim=1).to(setup.device)

    def candidate(self, b, f_gone, y_gone, parent):
        w = torch.softmax(self.parent.head(parent[b.n_r:])[:, self.retained], dim=1)
        target = F.normalize(w @ self.protos[self.retained], dim=1)
        return (1 - (F.normalize(f_gone, dim=1) * target).sum(1)).mean()


class PushCentroid(Candidate):
    """Push each forgotten image off the parent's centroid of its class (cosine above 0)."""

    def __init__(self, setup) -> None:
        super().__init__(setup)
        out = collect_outputs(setup.model, setup.data.forget, setup.device, want_features=True)
        self.centroid = F.normalize(out["features"].mean(0), dim=0).to(setup.device)

    def candidate(self, b, f_gone, y_gone, parent):
        return F.relu(F.normalize(f_gone, dim=1) @ self.centroid).mean()


class DisperseAll(Candidate):
    """Mean pairwise cosine of all forgotten images of the batch, every class together."""

    def candidate(self, b, f_gone, y_gone, parent):
        z = F.normalize(f_gone, dim=1)
        off = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        return (z @ z.T)[off].mean()


class DisperseClass(Candidate):
    """Mean pairwise cosine within each forgotten class (Spotter's dispersion)."""

    def candidate(self, b, f_gone, y_gone, parent):
        z = F.normalize(f_gone, dim=1)
        same = (y_gone[:, None] == y_gone[None, :]) & ~torch.eye(len(z), dtype=torch.bool,
                                                                 device=z.device)
        return (z @ z.T)[same].mean() if same.any() else z.sum() * 0


class Uniformity(Candidate):
    """Wang & Isola's uniformity within each forgotten class: the term kept."""

    def candidate(self, b, f_gone, y_gone, parent):
        return uniformity(f_gone, y_gone, self.cfg.temperature)


# "defaults": the embedding terms as params.yaml sets them (what the candidates led to)
CANDIDATES = {"none": None, "defaults": None, "nearest-image": NearestImage, "resemble": Resemble,
              "push-centroid": PushCentroid, "disperse-all": DisperseAll,
              "disperse-class": DisperseClass, "uniformity": Uniformity}


def run(bench, seeds: int, steps: int, names: list[str]) -> dict:
    orders = [bench.order(s, steps) for s in range(seeds)]
    refs = [reference_rows(bench, s, orders[s], "val") for s in range(seeds)]
    out = {"seeds": seeds, "steps": steps, "orders": [[bench.names[c] for c in o]
                                                      for o in orders],
           "retrain": _summary(refs), "candidates": {},
           "defaults": bench.cfg.forget.embedding.model_dump(mode="json")}
    # the candidate's weight; keep_retained 1 (the distillation kept), earlier images 32
    fcfg = bench.cfg.forget.model_copy(update={
        "earlier_batch_size": 32,
        "embedding": bench.cfg.forget.embedding.model_copy(update={
            "relabel": 0.0, "uniformity": 0.0, "keep_retained": 0.0})})
    for name in names:
        cls = CANDIDATES[name]
        if name == "defaults":
            cfg = bench.cfg.forget
        else:
            cfg = fcfg if cls is None else fcfg.model_copy(update={
                "embedding": fcfg.embedding.model_copy(update={"keep_retained": 1.0})})
        original = train.EmbeddingForgetting
        train.EmbeddingForgetting = cls or original
        try:
            # the cache key tells the candidates apart by name (their code is not in cfg)
            rows = [method_rows(bench, cfg, "gs-lora++", None, s, orders[s], "val",
                                tag=f"embedding candidate {name}" if cls else None)
                    for s in range(seeds)]
        finally:
            train.EmbeddingForgetting = original
        out["candidates"][name] = _summary(rows)
        r = out["candidates"][name]
        print(f"{name:<15} Acc_r " + " ".join(f"{100 * a:.1f}" for a in r["acc_r"])
              + " | k-NN " + " ".join(f"{a:.2f}" for a in r["identification"])
              + " | probe " + " ".join(f"{a:.2f}" for a in r["linear_probe"]), flush=True)
    return out


def _summary(runs: list[list[dict]]) -> dict:
    steps = len(runs[0])
    return {k: [float(np.mean([r[i][k] for r in runs])) for i in range(steps)]
            for k in ("acc_r", "acc_f")} | {
        a: [float(np.mean([r[i]["evidence"][a]["value"] for r in runs])) for i in range(steps)]
        for a in ("identification", "linear_probe")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--config", default="params.yaml")
    ap.add_argument("--cache", default=".forgetting/bench-cache")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    bench = load(args.config, args.cache)
    print(f"retrain reference (val, mean over {args.seeds} base models):", flush=True)
    result = run(bench, args.seeds, args.steps, [c.strip() for c in args.candidates.split(",")])
    r = result["retrain"]
    print(f"{'retrain':<15} Acc_r " + " ".join(f"{100 * a:.1f}" for a in r["acc_r"])
          + " | k-NN " + " ".join(f"{a:.2f}" for a in r["identification"])
          + " | probe " + " ".join(f"{a:.2f}" for a in r["linear_probe"]))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
