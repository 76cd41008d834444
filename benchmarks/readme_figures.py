"""The measured figures of the README and docs/, generated from recorded results so they
cannot go stale.

    python benchmarks/readme_figures.py --run      # run every benchmark, record, render
    python benchmarks/readme_figures.py            # render README from benchmarks/results/
    python benchmarks/readme_figures.py --check    # exit 1 if README and results disagree

``--run`` (about 2 hours on 2 CPU cores) records, each with the machine it ran on:
``forget demo`` in a fresh folder (``demo.json``), ``dvc repro``'s committed metrics
(``data/repro/*.json``), ``quality.py --quick`` (``quality.json``), ``sequence.py``
(``sequence.json``), ``throughput.py``, ``registry_bytes.py``, the CLI latencies
(``latency.json``) and the test suite's CPU (``suite_cpu.py``, 7 min); with ``--scale``
also ``scale.py`` and ``cost.py`` (Fashion-MNIST, about an hour each). The README holds each
figure between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``; the test suite runs
``--check``, so a figure in the README is always the one in the results beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"


def pages() -> list[Path]:
    """The README and every page under docs/: where figures blocks may stand."""
    return [README, *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- figures:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)",
                   re.S)


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True).stdout.strip())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit, "dirty": dirty,
            "date": datetime.now(UTC).isoformat(timespec="minutes")}


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _save(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**data, "machine": machine()}, indent=2)
                                          + "\n")


def run_all(scale: bool = False) -> None:
    record_demo()
    # tune first: the later tables measure the defaults it chooses (set in params.yaml by hand)
    for name in ("tune", "tune-views", "tune-repeats", "tune-replay", "methods", "embedding",
                 "quality", "sequence", "throughput", "sampler", "registry", "stack", "burst", "import",
                 "suite-cpu", *(["scale", "cost"] if scale else [])):
        record(name, COMMANDS[name].split()[1:])


def record_demo(seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """`forget demo` timed in a fresh folder per pretraining seed (the default params and
    gates, ``pretrain.seed`` set), then the CLI latency on the first workspace."""
    from forgetting.config import Config, dump_config

    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="figures-"))
    runs = []
    for seed in seeds:
        root = work / f"demo-{seed}"
        root.mkdir()
        (root / "params.yaml").write_text(dump_config(Config.model_validate(
            {"pretrain": {"seed": seed}})))
        t0 = time.perf_counter()
        subprocess.run([py, "-m", "forgetting_cli", "demo", "--root", str(root)], check=True,
                       cwd=REPO)
        seconds = round(time.perf_counter() - t0)
        st = json.loads(subprocess.run([py, "-m", "forgetting_cli", "status", "--json",
                                        "--root", str(root)], check=True, capture_output=True,
                                       text=True).stdout)
        runs.append({"seed": seed, "seconds": seconds, "status": st})
    _save("demo", {"runs": runs, "seconds": runs[0]["seconds"], "status": runs[0]["status"]})
    lat = _last_json(subprocess.run([py, "benchmarks/cli_latency.py", "--root",
                                     str(work / f"demo-{seeds[0]}"), "--json"], check=True,
                                    cwd=REPO, capture_output=True, text=True).stdout)
    prev = json.loads((RESULTS / "latency.json").read_text()) \
        if (RESULTS / "latency.json").exists() else {}
    _save("latency", {"after": lat, **{k: v for k, v in prev.items() if k.startswith("before")}})
    shutil.rmtree(work)  # the temp folder this script made


def record(name: str, args: list[str]) -> None:
    """Run one benchmark and save its last JSON line; the sequence keeps the pipeline figures
    of the run before as ``before`` (the per-request overhead this change is measured by)."""
    out = subprocess.run([sys.executable, *args], check=True, cwd=REPO, capture_output=True,
                         text=True).stdout
    data = _last_json(out)
    data = {"rows": data} if isinstance(data, list) else data
    prev_path = RESULTS / f"{name}.json"
    if name == "sequence" and prev_path.exists():
        prev = json.loads(prev_path.read_text())
        data["before"] = prev.get("before") or {
            k: prev[k] for k in ("pipeline_seconds_total", "library_seconds_total")
            if k in prev}
    _save(name, data)


# what a reader runs to measure each figure again (``--run`` runs them all)
COMMANDS = {"quality": "python benchmarks/quality.py --quick --json",
            "sequence": "python benchmarks/sequence.py --json",
            "throughput": "python benchmarks/throughput.py --json",
            "registry": "python benchmarks/registry_bytes.py --json",
            "scale": "python benchmarks/scale.py --json",
            "latency": "python benchmarks/cli_latency.py --root DEMO_FOLDER --json",
            "stack": "python benchmarks/stack.py --json",
            "burst": "python benchmarks/burst.py --requests 20 --json",
            "methods": "python benchmarks/methods.py --methods gs-lora++,gs-lora++:4,retrain "
                       "--attacks identification,linear_probe,membership --json",
            "import": "python benchmarks/import_check.py --json",
            "sampler": "python benchmarks/throughput.py --sampler --json",
            "embedding": "python benchmarks/embedding_candidates.py --json",
            "demo": "python benchmarks/readme_figures.py --only demo",
            "tune": "python benchmarks/tune.py --spaces embedding,4-shot --json",
            "tune-views": "python benchmarks/tune.py --spaces 4-shot-views --configs "
                          "benchmarks/configs/fashion-mnist-small.yaml --seeds 2 --json",
            "tune-repeats": "python benchmarks/tune.py --spaces 4-shot-repeats --configs "
                            "params.yaml,benchmarks/configs/fashion-mnist-small.yaml --seeds 5,2 "
                            "--json",
            "tune-replay": "python benchmarks/tune.py --spaces 4-shot-replay --json",
            "references": "python benchmarks/references.py --seeds 5,5 --requests 4,4 --json",
            "cost": "python benchmarks/cost.py --json",
            "suite-cpu": "python benchmarks/suite_cpu.py --json"}


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _on(m: dict) -> str:
    at = f", commit {m['commit']}{' + changes' if m.get('dirty') else ''}" if m.get("commit") \
        else ""
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date'][:10]}{at}"


def render_demo() -> str:
    d = _load("demo")
    reqs = d["status"]["requests"]
    lines = [f"Measured by `make demo` (`benchmarks/results/demo.json`; {_on(d['machine'])}): the run took "
             f"{d['seconds'] // 60} min {d['seconds'] % 60:02d} s after the install; production "
             f"is v{d['status']['production_version']}."]
    for r in reqs:
        m = r["metrics"]
        lines.append(f"- {r['id']} (`{','.join(r['classes'])}`"
                     f"{', ' + str(r['shots']) + '-shot' if r['shots'] else ''}): "
                     f"**{r['status']}** as v{r['model_version']}, Acc_f "
                     f"{m['acc_f']:.3f}, Acc_r {m['before_acc_r']:.3f} -> {m['acc_r']:.3f}"
                     + (f"; gate: {r['gate']}" if r["gate"] != "passed" else ""))
    return "\n".join(lines) + "\n"


def render_repro() -> str:
    m = json.loads((REPO / "data" / "repro" / "metrics.json").read_text())
    p = json.loads((REPO / "data" / "repro" / "pretrain.json").read_text())
    rows = [f"base model: val accuracy {p['val_acc']:.3f}, pretrained in {p['seconds']:.0f} s"]
    rows += [f"- step {s['step']} (`{','.join(s['classes'])}`, on step {s['parent_step']}): "
             f"Acc_f {s['acc_f']:.3f}, Acc_r {s['before_acc_r']:.3f} -> {s['acc_r']:.3f}, "
             f"gate {s['gate']}" for s in m["steps"]]
    return "Measured by `dvc repro` (`data/repro/metrics.json`, `pretrain.json`, committed " \
        "with `dvc.lock`): " \
        + rows[0] + "\n" + "\n".join(rows[1:]) + "\n"


def render_quality(name: str = "quality") -> str:
    r = _load(name)
    data = (f" on {r['source']} ({r['train_images']:,} training images)"
            if "train_images" in r else "")
    return "\n".join([
        f"Measured by `{COMMANDS[name]}` (`benchmarks/results/{name}.json`; {_on(r['machine'])}, "
        f"{r.get('threads', '?')} threads), forgetting `{','.join(r['classes'][0])}`{data}:",
        "",
        "| model | Acc_f | Acc_r | H-Mean | seconds |",
        "|---|---|---|---|---|",
        f"| original | {_pct(r['acc_f_before'])} | {_pct(r['acc_r_before'])} | | |",
        f"| GS-LoRA++ full data | {_pct(r['acc_f'])} | {_pct(r['acc_r'])} | "
        f"{_pct(r['h_mean'])} | {r['forget_seconds']:.1f} |",
        f"| GS-LoRA++ 4-shot | {_pct(r['fewshot_acc_f'])} | {_pct(r['fewshot_acc_r'])} | "
        f"{_pct(r['fewshot_h_mean'])} | {r['fewshot_forget_seconds']:.1f} |",
        f"| retrain from scratch | {_pct(r['retrain_acc_f'])} | {_pct(r['retrain_acc_r'])} | "
        f"| {r['retrain_seconds']:.1f} |",
        "",
        f"{r['retrain_seconds'] / r['forget_seconds']:.1f}x faster than retraining "
        f"({r['retrain_seconds'] / r['fewshot_forget_seconds']:.1f}x 4-shot); adapter "
        f"{r['adapter_bytes'] / 1024:.1f} KiB = {100 * r['adapter_bytes'] / r['model_bytes']:.2f} "
        f"% of the model, {r['groups_kept']:.0f} of {r['groups_total']:.0f} groups kept. "
        f"Membership-inference AUC on the forgotten images: original "
        f"{r['mia_forget_original']:.3f}, GS-LoRA++ {r['mia_forget']:.3f}, retrain "
        f"{r['mia_forget_retrain']:.3f}.", ""])


def render_sequence() -> str:
    r = _load("sequence")
    full, few = r["steps"][-1], r["fewshot_steps"][-1]
    n = len(r["steps"])
    lines = [
        f"Measured by `{COMMANDS['sequence']}` (`benchmarks/results/sequence.json`; {_on(r['machine'])}, "
        f"{r.get('threads', '?')} threads), {n} one-class requests in a row:", "",
        f"| after {n} requests | Acc_f | Acc_r | Acc_o (max over steps) | seconds (total) |",
        "|---|---|---|---|---|",
        f"| GS-LoRA++ full data | {_pct(full['acc_f'])} | {_pct(full['acc_r'])} | "
        f"{_pct(full['acc_o'])} ({_pct(max(s['acc_o'] or 0 for s in r['steps']))}) | "
        f"{r['forget_seconds_total']:.0f} |",
        f"| GS-LoRA++ {r['shots']}-shot | {_pct(few['acc_f'])} | {_pct(few['acc_r'])} | "
        f"{_pct(few['acc_o'])} ({_pct(max(s['acc_o'] or 0 for s in r['fewshot_steps']))}) | "
        f"{r['fewshot_forget_seconds_total']:.0f} |",
        f"| retrain from scratch | {_pct(full['retrain_acc_f'])} | "
        f"{_pct(full['retrain_acc_r'])} | {_pct(full['retrain_acc_o'])} | "
        f"{r['retrain_seconds_total']:.0f} |", "",
        f"Full data: {r['retrain_seconds_total'] / r['forget_seconds_total']:.1f}x faster than "
        f"retraining. Membership-inference AUC on every class forgotten so far, gap to the "
        f"retrained model per step: " + ", ".join(
            f"{abs(s['mia_auc_all'] - s['retrain_mia_auc_all']):.3f}" for s in r["steps"]) + "."]
    if "pipeline_seconds_total" in r:
        over = r["pipeline_seconds_total"] - r["library_seconds_total"]
        lines.append(f"Through Prefect + MLflow + DVC the same requests took "
                     f"{r['pipeline_seconds_total']:.0f} s vs {r['library_seconds_total']:.0f} s "
                     f"as library calls: {over / n:.1f} s per request of pipeline overhead")
        b = r.get("before") or {}
        if "pipeline_seconds_total" in b:
            lines[-1] += (f" (was {(b['pipeline_seconds_total'] - b['library_seconds_total']) / n:.1f}"
                          " s when each version stored a whole-model export)")
        lines[-1] += "."
    return "\n".join(lines) + "\n"


def render_latency() -> str:
    r = _load("latency")
    rows = ["| command | before (s) | now (s) |", "|---|---|---|"]
    for k, v in r["after"].items():
        b = (r.get("before") or {}).get(k)
        rows.append(f"| `forget {k}` | {b['median_s']:.2f} |" if b else f"| `forget {k}` | - |")
        rows[-1] += f" {v['median_s']:.2f} |"
    return (f"Median of 5 fresh processes on an idle machine, by `{COMMANDS['latency']}` "
            f"(`benchmarks/results/latency.json`;"
            f" {_on(r['machine'])}); *before*: commit {r.get('before_commit', '6d05317')}.\n\n"
            + "\n".join(rows) + "\n")


def render_throughput() -> str:
    r = _load("throughput")
    rows = ["| model | GFLOP/image | loading img/s | forward img/s (TFLOP/s) | GS-LoRA step img/s |",
            "|---|---|---|---|---|"]
    for x in r["rows"]:
        rows.append(f"| {x['arch']} {x['image_size']} px, batch {x['batch']} | "
                    f"{x['gflops_per_image']} | {x['load_img_s']:,.0f} | "
                    f"{x['forward_img_s']:,.0f} ({x['forward_tflops']}) | "
                    f"{x['train_step_img_s']:,.0f} |")
    ratios = "; ".join(f"{x['arch']}: loading {x['load_img_s'] / x['forward_img_s']:.1f}x the "
                       f"forward rate, the GS-LoRA step {x['train_step_img_s'] / x['forward_img_s']:.2f}x"
                       for x in r["rows"])
    return (f"Measured by `{COMMANDS['throughput']}` (`benchmarks/results/throughput.json`; "
            f"{_on(r['machine'])}, "
            f"{r['threads']} threads, {r['rows'][0]['device']}, loader workers "
            f"{r['rows'][0]['loader_workers']}):\n\n" + "\n".join(rows) + f"\n\n{ratios}.\n")


def render_registry() -> str:
    r = _load("registry")
    rows = ["| model | before: every version | now: a request version (adapter + rest) | "
            "base, once | merged production export |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        v = max(x["versions"], key=lambda v: v["bytes"])
        rows.append(f"| {x['model']} ({x['params_m']} M params) | "
                    f"{x['before_bytes_per_version'] / 1e6:.2f} MB | {v['bytes'] / 1e3:.1f} KB "
                    f"({v['adapter_bytes'] / 1e3:.1f} + {x['overhead_bytes'] / 1e3:.1f}) | "
                    f"{x['base_bytes'] / 1e6:.2f} MB | {x['production_export_bytes'] / 1e6:.2f} MB |")
    secs = "; ".join(f"{x['model']} {max(v['log_seconds'] for v in x['versions']):.2f} s "
                     f"(was {x['before_log_seconds']:.1f} s)" for x in r["rows"])
    return (f"Measured by `{COMMANDS['registry']}` (`benchmarks/results/registry.json`; "
            f"{_on(r['machine'])}; two request "
            "versions of 2 kept groups each, rank 8):\n\n" + "\n".join(rows)
            + f"\n\nLogging a request version: {secs}.\n")


def render_stack() -> str:
    r = _load("stack")
    e, s, ser, par = r["embedded"], r["stack"], r["evidence_serial"], r["evidence_parallel"]
    return (f"Measured by `{COMMANDS['stack']}` (`benchmarks/results/stack.json`; "
            f"{_on(r['machine'])}; the digits model of `params.yaml`, everything on this one "
            f"host):\n"
            f"- `forget stack up`, cold: {r['stack_up_seconds']:.0f} s.\n"
            f"- Per request ({r['requests']} one-class requests through the request flow, "
            f"evidence off): embedded {e['per_request']:.1f} s, on the stack "
            f"{s['per_request']:.1f} s ({r['stack_vs_embedded']:.2f}x: "
            f"{r['overhead_per_request']:+.1f} s per request for PostgreSQL-backed Prefect "
            f"and MLflow, S3 and git pushes, all over TLS, and the lock); submitting the "
            f"{r['requests']} requests as flow runs took {s['submit_seconds']:.1f} s.\n"
            f"- One request with its retrain reference and membership inference: retrain "
            f"after the forgetting run {ser['seconds']:.1f} s, beside it in a Dask worker "
            f"process (`evidence.parallel`) {par['seconds']:.1f} s "
            f"({r['parallel_speedup']:.2f}x) on {r['cpus']} cores.\n")


def render_burst() -> str:
    r = _load("burst")
    once = ("exactly once, in its workspace's submission order" if r["each_once_in_order"]
            else "NOT once and in order: " + "; ".join(r["problems"]))
    return (f"Measured by `{COMMANDS['burst']}` (`benchmarks/results/burst.json`; "
            f"{_on(r['machine'])}; three workspaces on one stack, a micro model on the digits, "
            f"one thread per process, evidence off): {r['requests']} submissions from {r['clients']} "
            f"client folders at once took {r['submit_seconds']:.0f} s to submit (one "
            f"`forget request add` {r['submission_latency_median_s']:.1f} s median, "
            f"{r['submission_latency_max_s']:.1f} s at most); {r['workers']} workers finished "
            f"them {r['wall_seconds']:.0f} s after the first submission "
            f"({r['requests_per_minute']:.1f} requests a minute on {r['cpus']} cores), each "
            f"request {once}.\n")


LABELS = {"gs-lora++": "GS-LoRA++", "gs-lora": "GS-LoRA", "fg-oriu": "FG-OrIU",
          "finetune": "fine-tune", "neggrad": "NegGrad+", "retrain": "retrain",
          "original": "original", "head_only": "head-only"}


def _ms(v: dict | None, scale: float = 100.0) -> str:
    return "-" if v is None else f"{scale * v['mean']:.2f} ± {scale * v['std']:.2f}"


def _recorded(name: str) -> bool:
    return (RESULTS / f"{name}.json").is_file()


def render_import() -> str:
    if not _recorded("import"):
        return f"Not recorded yet: `{COMMANDS['import']}`.\n"
    r = _load("import")
    c = r["cases"]
    args = ", ".join(f"{k}={v}" for k, v in r["user_model"].items() if k != "arch")
    lines = [f"Measured by `{COMMANDS['import']}` (`benchmarks/results/import.json`; "
             f"{_on(r['machine'])}): a plain timm `{r['user_model']['arch']}` ({args}) trained "
             f"outside the project on Fashion-MNIST, saved with `safetensors`; its user's own "
             f"evaluation with timm on the workspace's validation images: "
             f"{100 * r['user_val_acc']:.2f} %.", ""]
    for name, case in c.items():
        if case.get("status_val_acc") is not None:
            lines.append(f"- `forget pretrain --checkpoint ...` with {name}: imported, validation "
                         f"accuracy {100 * case['status_val_acc']:.2f} % "
                         f"({case['gap_points']:+.2f} points against the user's own).")
        else:
            lines.append(f"- with {name}: refused (exit {case['exit']}): `{case.get('error')}`")
    return "\n".join(lines) + "\n"


def render_gpu() -> str:
    if not _recorded("gpu"):
        return ("No GPU was lent to the sessions that wrote this: `make gpu-check` has not run "
                "on one yet, and no figure here is a GPU's. Its `--tiny` twin runs in the test "
                "suite on the CPU.\n")
    r = _load("gpu")
    tp = r.get("throughput", {})
    lines = [f"Measured by `make gpu-check` (`benchmarks/results/gpu.json`; "
             f"{tp.get('device_name', r['device'])}, torch {r['torch']}, "
             f"{r['machine']['date'][:10]}): failed parts: {', '.join(r['failed']) or 'none'}.",
             "", "| ViT-B/16 224 px, bf16 | forward img/s | GS-LoRA step img/s | of bf16 peak "
                 "(forward, step) |", "|---|---|---|---|"]
    for key in ("eager", "compiled"):
        row = tp.get(key) or {}
        if "forward" in row:
            f, st = row["forward"], row["gs_lora_step"]
            share = (f"{100 * f['of_peak']:.1f} %, {100 * st['of_peak']:.1f} %"
                     if f.get("of_peak") else "-")
            lines.append(f"| {key} | {f['img_s']:,.0f} | {st['img_s']:,.0f} | {share} |")
        else:
            lines.append(f"| {key} | {row.get('error', '-')} | | |")
    req = r.get("request", {})
    if req.get("steps"):
        lines.append("")
        lines.append(f"One request end to end: {req['status']} (Acc_f {req['acc_f']:.3f}, "
                     f"Acc_r {req['acc_r']:.3f}); "
                     + ", ".join(f"`forget {s['command']}` {s['seconds']} s"
                                 for s in req["steps"]) + ".")
    return "\n".join(lines) + "\n"


# --- the results of benchmarks/tune.py and benchmarks/methods.py over several benches ------

BENCH_LABELS = {"params": "digits", "fashion-mnist-small": "Fashion-MNIST"}


def _bench(name: str) -> str:
    return BENCH_LABELS.get(name, name)


def _verdict_cell(v: dict) -> str:
    short = {"retains more": "**retains more**", "below": "below",
             "indistinguishable": "indistinguishable"}[v["verdict"]]
    return f"{v['method']:.2f} vs {v['retrain']:.2f} ({short})"


def render_tune_benches(name: str = "tune") -> str:
    r = _load(name)
    out = [f"Measured by `{COMMANDS[name]}` (`benchmarks/results/{name}.json`; "
           f"{_on(r['machine'])}; **validation split**; "
           + ", ".join(f"{_bench(Path(c).stem)}: {n} base models" for c, n in
                       zip(r["configs"], r["seeds"], strict=True))
           + f", {r['steps']} one-class requests each; means over the base models; the evidence"
             " columns are k-NN identification and the linear probe on every class forgotten "
             f"by step {r['steps']}, against retrain):"]
    for space, sp in r["spaces"].items():
        keys = sorted({k for row in sp["rows"] for k in row["setting"]})
        benches = list(sp["benches"])
        shots = f" at {sp['shots']} shots" if sp.get("shots") else ""
        rule = ", evidence in the rule" if sp["evidence_rule"] else ""
        base = ", ".join(f"`{k}` {v}" for k, v in sp["on_top_of"].items()) or "the defaults"
        out += ["", f"Space `{space}`: `{sp['method']}`{shots} (Acc_f bar "
                f"{100 * sp['acc_f_bar']:.0f} %, Acc_o bar {100 * sp['acc_o_bar']:.0f} %{rule}; "
                f"on top of {base}):", ""]
        head = ["setting"]
        for b in benches:
            head += [f"{_bench(b)}: Acc_r − retrain (mean, worst step)", "max Acc_f / Acc_o",
                     f"k-NN, step {r['steps']}", f"probe, step {r['steps']}",
                     "steps retaining more (k-NN, probe)"]
        out += ["| " + " | ".join([*head, ""]) + " |", "|---" * (len(head) + 1) + "|"]
        for row in sp["rows"]:
            cells = [", ".join(f"`{k}` {row['setting'][k]}" for k in keys if k in row["setting"])
                     or "the defaults of the measured commit"]
            for b in benches:
                sc = row["per_bench"][b]
                ev = sc.get("evidence") or {}
                cells += [f"{100 * sc['acc_r_gap_mean']:+.2f}, {100 * sc['acc_r_gap_worst']:+.2f}",
                          f"{100 * sc['acc_f_max']:.2f} / {100 * sc['acc_o_max']:.2f}",
                          _verdict_cell(ev["identification"][-1]) if ev else "-",
                          _verdict_cell(ev["linear_probe"][-1]) if ev else "-",
                          ", ".join(str(sum(v["verdict"] == "retains more" for v in ev[a]))
                                    for a in ("identification", "linear_probe")) if ev else "-"]
            mark = ("**chosen**" if row["setting"] == sp["chosen"] else
                    "" if row["score"]["admissible"] else "not admissible")
            out.append("| " + " | ".join([*cells, mark]) + " |")
        if not sp["chosen_admissible"]:
            out.append(f"\nNo setting of `{space}` was admissible on every bench; the chosen "
                       f"one fails the fewest evidence checks (of {r['steps']} steps × 2 attacks "
                       f"× {len(benches)} bench{'es' if len(benches) > 1 else ''}).")
    return "\n".join(out) + "\n"


METHOD_LABELS = {"gs-lora": "GS-LoRA", "gs-lora++": "GS-LoRA++", "gs-lora++:4": "GS-LoRA++ 4-shot",
                 "fg-oriu": "FG-OrIU", "finetune": "fine-tune", "neggrad": "NegGrad+",
                 "gs-lora++@authors": "GS-LoRA++, authors' profile",
                 "gs-lora++:4@authors": "GS-LoRA++ 4-shot, authors' profile",
                 "retrain": "retrain"}


def _label(spec: str) -> str:
    return METHOD_LABELS.get(spec, spec)


def _methods_intro(r: dict, what: str) -> str:
    parts = []
    for name, b in r["benches"].items():
        parts.append(f"{_bench(name)}: {b['seeds']} base models, sequences "
                     + "; ".join(", ".join(o) for o in b["orders"]))
    return (f"Measured by `{COMMANDS['methods']}` (`benchmarks/results/methods.json`; "
            f"{_on(r['machine'])}; test split; {what}; " + ". ".join(parts) + ").")


def render_methods_benches() -> str:
    r = _load("methods")
    out = [_methods_intro(r, "mean ± std over the base models; Acc_r − retrain is the "
                             "paired gap of each step, its mean and worst step")]
    for name, b in r["benches"].items():
        t, n = b["table"], b["steps"]
        out += ["", f"**{_bench(name)}**, after {n} one-class requests:", "",
                "| method | Acc_r, step 5 | Acc_r − retrain (mean, worst step) | max Acc_f "
                "| max Acc_o | seconds per request | adapter KiB |", "|---" * 7 + "|"]
        ref_runs = b["runs"]["retrain"]
        for spec in r["methods"]:
            if spec not in t:
                continue
            steps = t[spec]
            runs = b["runs"][spec]
            if spec == "retrain":
                gap_txt = ""
            else:
                gaps = [float(sum(m[i]["acc_r"] - f[i]["acc_r"] for m, f in
                                  zip(runs, ref_runs, strict=True)) / len(runs))
                        for i in range(n)]
                gap_txt = f"{100 * sum(gaps) / n:+.2f}, {100 * min(gaps):+.2f}"
            secs = {"mean": float(sum(s["seconds"]["mean"] for s in steps) / n),
                    "std": float(max(s["seconds"]["std"] for s in steps))}
            kib = steps[-1]["adapter_bytes"]
            kib_txt = "-" if kib is None else f"{kib['mean'] / 1024:.0f}"
            acc_o = max((s["acc_o"] or {"mean": 0})["mean"] for s in steps)
            out.append(f"| {_label(spec)} | {_ms(steps[-1]['acc_r'])} | {gap_txt} "
                       f"| {100 * max(s['acc_f']['mean'] for s in steps):.2f} "
                       f"| {100 * acc_o:.2f} | {_ms(secs, 1)} | {kib_txt} |")
    return "\n".join(out) + "\n"


def render_evidence_benches() -> str:
    from forgetting.evidence import TITLES

    r = _load("methods")
    out = [_methods_intro(r, "each attack on every class forgotten so far (relearning: this "
                             "step's class), figure mean ± std over the base models; the "
                             "verdict compares each base model with its own retrain reference: "
                             "the paired gap against twice its standard error")]
    for name, b in r["benches"].items():
        n = b["steps"]
        out += ["", f"**{_bench(name)}**, step {n}:", "",
                "| method | " + " | ".join(TITLES[a] for a in b["attacks"]) + " |",
                "|---" * (len(b["attacks"]) + 1) + "|"]
        for spec in r["methods"]:
            if spec not in b["table"]:
                continue
            last = b["table"][spec][-1]["evidence"]
            cells = []
            for a in b["attacks"]:
                fig = _ms(last.get(a), 1)
                if spec != "retrain":
                    v = b["verdicts"][spec][a][-1]
                    fig += f" ({v['verdict']})"
                cells.append(fig)
            out.append(f"| {_label(spec)} | " + " | ".join(cells) + " |")
        counts = []
        for spec in r["methods"]:
            if spec == "retrain" or spec not in b["verdicts"]:
                continue
            per = b["verdicts"][spec]
            more = {a: sum(v["verdict"] == "retains more" for v in per[a]) for a in per}
            counts.append(f"{_label(spec)}: " + ", ".join(f"{a} {k}/{n}" for a, k in more.items()))
        out += ["", "Steps at which an attack found that the method retains more than retrain: "
                + "; ".join(counts) + "."]
    return "\n".join(out) + "\n"


def render_sampler() -> str:
    if not _recorded("sampler"):
        return f"Not recorded yet: `{COMMANDS['sampler']}`.\n"
    r = _load("sampler")
    s = r["sampler"]
    return (f"Measured by `{COMMANDS['sampler']}` (`benchmarks/results/sampler.json`; "
            f"{_on(r['machine'])}, {r['threads']} threads): {s['images']:,} synthetic RGB images "
            f"at 224 px whose decoded size is {s['decoded_over_cache']}x the row-group cache "
            f"({s['cache_mb']} MiB), {s['batches']} batches of {s['batch']} after the first:\n\n"
            "| shuffle | images/s | row groups decoded per image |\n|---|---|---|\n"
            f"| uniform (before) | {s['uniform']['img_s']} | "
            f"{s['uniform']['row_groups_decoded_per_image']} |\n"
            f"| block, window of {s['window_row_groups']} row groups | {s['block']['img_s']} | "
            f"{s['block']['row_groups_decoded_per_image']} |\n\n"
            f"{s['speedup']}x the images per second; each row group is decoded about once per "
            f"epoch instead of for almost every batch.\n")


def render_embedding() -> str:
    if not _recorded("embedding"):
        return f"Not recorded yet: `{COMMANDS['embedding']}`.\n"
    r = _load("embedding")
    n = r["steps"]
    rows = ["| candidate (with retained-embedding distillation) | val Acc_r, step 1 … 5 | k-NN "
            "identification, step 1 … 5 | linear probe, step 1 … 5 |", "|---|---|---|---|"]

    def fmt(v, pct=False):
        return " ".join(f"{100 * x:.1f}" if pct else f"{x:.2f}" for x in v)

    for name, c in [*r["candidates"].items(), ("retrain", r["retrain"])]:
        label = {"none": "none (GS-LoRA++ alone)", "retrain": "retrain reference",
                 "defaults": "**the defaults**: " + ", ".join(
                     f"{k} {v:g}" for k, v in r.get("defaults", {}).items()
                     if k in ("relabel", "uniformity", "keep_retained"))}.get(name, name)
        rows.append(f"| {label} | {fmt(c['acc_r'], True)} | {fmt(c['identification'])} "
                    f"| {fmt(c['linear_probe'])} |")
    return (f"Measured by `{COMMANDS['embedding']}` (`benchmarks/results/embedding.json`; "
            f"{_on(r['machine'])}; the digits, **validation split**, {r['seeds']} base models, "
            f"{n} one-class requests each, means; each candidate at weight 1; identification and "
            f"probe on every class forgotten so far):\n\n" + "\n".join(rows) + "\n")


def render_cost() -> str:
    if not _recorded("cost"):
        return f"Not recorded yet: `{COMMANDS['cost']}`.\n"
    r = _load("cost")
    rows = ["| steps per epoch at most | seconds | of the retrain | val Acc_f | val Acc_r | "
            "val H-Mean | k-NN identification | linear probe | equal quality |",
            "|---|---|---|---|---|---|---|---|---|"]

    def ev(c: dict, a: str) -> str:
        return f"{c[a]['value']:.3f} ± {c[a]['se']:.3f}"

    for cap, c in r["caps"].items():
        rows.append(f"| {cap} | {c['seconds']:.0f} | {c['of_retrain']:.3f} | {_pct(c['acc_f'])} "
                    f"| {_pct(c['acc_r'])} | {_pct(c['h_mean'])} | {ev(c, 'identification')} | "
                    f"{ev(c, 'linear_probe')} | {'yes' if c['equal_quality'] else 'no'} |")
    v = r["retrain"]["val"]
    rows.append(f"| retrain from scratch | {v['seconds']:.0f} | 1 | {_pct(v['acc_f'])} | "
                f"{_pct(v['acc_r'])} | | {ev(v, 'identification')} | {ev(v, 'linear_probe')} | |")
    t, tr = r["test"]["chosen"], r["test"]["retrain"]
    return (f"Measured by `{COMMANDS['cost']}` (`benchmarks/results/cost.json`; "
            f"{_on(r['machine'])}, {r['threads']} threads), one request forgetting "
            f"`{r['class']}` on Fashion-MNIST ({r['train_images']:,} training images), the "
            f"**validation split** (equal quality: against the first row, val Acc_f at most 1 "
            f"point higher, H-Mean within {100 * r['tolerance']:.1f} point, each probe within "
            "twice the noise of the difference):\n\n" + "\n".join(rows) + "\n\n"
            f"Chosen: at most {r['chosen']} steps per epoch. On the **test split**, once: "
            f"{t['seconds']:.0f} s against the retrain's {tr['seconds']:.0f} s "
            f"(**{r['of_retrain']:.3f}** of it), Acc_f {_pct(t['acc_f'])}, Acc_r "
            f"{_pct(t['acc_r'])} (retrain {_pct(tr['acc_r'])}), k-NN identification "
            f"{ev(t, 'identification')} (retrain {ev(tr, 'identification')}).\n")


def render_demo_seeds() -> str:
    d = _load("demo")
    if "runs" not in d:  # recorded before the demo ran over several pretraining seeds
        return render_demo()
    lines = [f"Measured by `{COMMANDS['demo']}` (`benchmarks/results/demo.json`; "
             f"{_on(d['machine'])}), a fresh workspace per pretraining seed, the default "
             "params and gates:", "",
             "| pretrain seed | minutes | req-0001 `digit_0,digit_1` | req-0002 `digit_7`, 4-shot "
             "| production |", "|---|---|---|---|---|"]
    for run in d["runs"]:
        cells = []
        for r in run["status"]["requests"]:
            m = r["metrics"]
            gate = "" if r["gate"] == "passed" else f"; gate: {r['gate']}"
            cells.append(f"**{r['status']}** v{r['model_version']}, Acc_f {m['acc_f']:.3f}, "
                         f"Acc_r {m['before_acc_r']:.3f} → {m['acc_r']:.3f}{gate}")
        lines.append(f"| {run['seed']} | {run['seconds'] / 60:.1f} | " + " | ".join(cells)
                     + f" | v{run['status']['production_version']} |")
    return "\n".join(lines) + "\n"


def _agreement_table(summary: dict, cheap: str, n: int) -> list[str]:
    """Per attack: how often the ``cheap`` reference's verdict is the retrain reference's, on
    the requests (the GS-LoRA++ candidates: the verdict a request gets) and on all three models
    (the positive controls too, where the retrain reference itself may miss)."""
    rows = [f"| attack | {cheap} agrees with retrain: on the requests (GS-LoRA++) / on all three "
            f"models (with the positive controls) | on GS-LoRA++: flagged by {cheap} / by "
            f"retrain | positive controls missed: {cheap} / retrain | retrained model flagged "
            f"by {cheap} |", "|---|---|---|---|---|"]
    flagged = f"retrain_flagged_by_{cheap.replace('-', '_')}"
    for a, s_ in summary.items():
        rows.append(
            f"| {a} | {100 * s_['agreement_candidate']:.0f} % of {n} / "
            f"{100 * s_['agreement']:.0f} % of {s_['pairs']} | "
            f"{s_['candidate_flagged'][cheap]} / {s_['candidate_flagged']['retrain']} of {n} | "
            f"{s_['missed_controls'][cheap]} / {s_['missed_controls']['retrain']} of "
            f"{s_['controls']} | {s_[flagged]} of {n} |")
    return rows


def render_references() -> str:
    if not _recorded("references"):
        return f"Not recorded yet: `{COMMANDS['references']}`.\n"
    from forgetting.config import EvidenceConfig

    default_size = EvidenceConfig.model_fields["partition_size"].default
    r = _load("references")
    parts = [f"Measured by `{COMMANDS['references']}` (`benchmarks/results/references.json`; "
             f"{_on(r['machine'])}; **validation split** as the probes; per bench, base models "
             "pretrained without two never-seen classes drawn per seed, one-class requests drawn "
             "from the others, each judged on four models: GS-LoRA++ at the defaults, the "
             "original and a head-only change (positive controls), the retrained model "
             "(negative control); a verdict counts as a flag when it says \"retains more\"):"]
    for name, b in r["benches"].items():
        c = b["seconds"]
        n = len(b["requests"])
        # a bench re-run alone keeps its own record (the other's cache was not on the machine)
        alone = (f" (this bench: {_on(b['machine'])})"
                 if b.get("machine", r["machine"]) != r["machine"] else "")
        parts += ["", f"**{_bench(name)}**{alone}: {n} requests over {b['seeds']} base models "
                      f"(reference classes per seed: "
                      + "; ".join(sorted({", ".join(q["reference_classes"])
                                          for q in b["requests"]})) + "). Seconds per request: "
                      f"forgetting {c['forget']:.0f}; evidence with the retrain reference "
                      f"{c['retrain']:.0f} ({c['retrain'] / c['forget']:.1f}× the forgetting, "
                      f"its training {c['retrain_training']:.0f}); with the never-seen reference "
                      f"{c['never_seen']:.0f} ({c['never_seen'] / c['forget']:.1f}×).", "",
                  *_agreement_table(b["summary"], "never-seen", n)]
        one, two = b["summary"]["identification"], b["summary_at_2"]["identification"]
        parts += ["", f"Identification, never-seen verdicts at {b['noise_multiple']:g}× their "
                      f"noise (the table) / at 2×: agreement {100 * one['agreement']:.0f} % / "
                      f"{100 * two['agreement']:.0f} %, positive controls missed "
                      f"{one['missed_controls']['never-seen']} / "
                      f"{two['missed_controls']['never-seen']} of {one['controls']}, retrained "
                      f"models flagged {one['retrain_flagged_by_never_seen']} / "
                      f"{two['retrain_flagged_by_never_seen']} of {n}."]
        if "partition" in b:
            p = b["partition"]
            train = p["seconds_per_model"] / p["size"]
            # recorded since the attacks' own seconds were kept apart (older rows: training only)
            whole = (f" = {p['evidence_per_request']:.0f} s of evidence per request with the "
                     f"attacks on the parent and the candidate and the group model's on the "
                     f"class, {p['evidence_per_request'] / c['forget']:.1f}× the forgetting"
                     if "evidence_per_request" in p
                     else ", beside the attacks on the parent and the candidate")
            mark = " (the default)" if p["size"] == default_size else ""
            parts += ["", f"Partition reference{mark} (classes in groups of {p['size']}, one model "
                          f"trained without each group, {p['models_per_base']:.0f} per base "
                          f"model, {p['seconds_per_model']:.0f} s each, once per dataset "
                          "version: if every request-able class is asked for once, "
                          f"{train:.0f} s of training per request, "
                          f"{train / c['forget']:.1f}× the forgetting{whole}; "
                          "judged by the retrain rule):", "",
                      *_agreement_table(p["summary"], "partition", n)]
            for alt in b.get("partition_other", []):  # other group sizes, the same requests
                cost = alt["evidence_per_request"]
                # its own run's forgetting where it kept it (the same requests, another hour)
                forget = alt.get("forget_seconds", c["forget"])
                on = f"; {_on(alt['machine'])}" if alt.get("machine") else ""
                mark = ", the default" if alt["size"] == default_size else ""
                parts += ["", f"Groups of {alt['size']} (`{alt['command']}`{mark}: the same requests "
                              f"and models, {alt['models_per_base']:.0f} group models per base "
                              f"model, {alt['seconds_per_model']:.0f} s each; {cost:.0f} s of "
                              f"evidence per request, {cost / forget:.1f}× the "
                              f"forgetting{on}):", "",
                          *_agreement_table(alt["summary"], "partition", n)]
    return "\n".join(parts) + "\n"


def render_suite_cpu() -> str:
    if not _recorded("suite-cpu"):
        return f"Not recorded yet: `{COMMANDS['suite-cpu']}`.\n"
    r = _load("suite-cpu")
    kinds = ["| kind of process | CPU-s | processes |", "|---|---|---|",
             *(f"| {k} | {v['cpu_s']:.0f} | {v['processes']} |" for k, v in r["kinds"].items())]
    mods = ["| test module | CPU-s in its pytest process (own + waited-for children) | "
            "wall s | tests |", "|---|---|---|---|",
            *(f"| `{k}` | {m['self'] + m['children']:.0f} ({m['self']:.0f} + "
              f"{m['children']:.0f}) | {m['wall']:.0f} | {m['tests']} |"
              for k, m in r["modules"].items() if m["self"] + m["children"] >= 5)]
    outcome = "passed" if r["returncode"] == 0 else "FAILED: " + ", ".join(
        r.get("failed") or [f"exit {r['returncode']}"])
    return (f"Measured by `{COMMANDS['suite-cpu']}` (`benchmarks/results/suite-cpu.json`; "
            f"{_on(r['machine'])}): `make test`'s run ({outcome}) "
            f"took {r['wall_s']:.0f} s and "
            f"**{r['busy_cpu_s']:.0f} busy CPU-seconds** on {r['cores']} cores "
            f"({100 * r['busy_share']:.0f} % of them), so its time cannot fall below "
            f"{r['busy_cpu_s'] / r['cores']:.0f} s without less CPU. Every process the run "
            f"started, sampled each second ({r['sampled_cpu_s']:.0f} CPU-s seen):\n\n"
            + "\n".join(kinds) + "\n\nEach test module (modules under 5 CPU-s left out; "
            "servers and fork-server processes are not a module's children, so they show "
            "above, not here):\n\n" + "\n".join(mods) + "\n")


RENDER = {"demo": render_demo_seeds, "repro": render_repro, "quality": render_quality,
          "sequence": render_sequence, "latency": render_latency,
          "scale": lambda: render_quality("scale"), "throughput": render_throughput,
          "registry": render_registry, "stack": render_stack, "burst": render_burst,
          "evidence": render_evidence_benches, "methods": render_methods_benches,
          "tune": render_tune_benches, "tune-views": lambda: render_tune_benches("tune-views"),
          "tune-repeats": lambda: render_tune_benches("tune-repeats"),
          "tune-replay": lambda: render_tune_benches("tune-replay"),
          "import": render_import, "gpu": render_gpu,
          "sampler": render_sampler, "embedding": render_embedding,
          "references": render_references, "cost": render_cost,
          "suite-cpu": render_suite_cpu}


def rendered(text: str) -> str:
    def sub(m: re.Match) -> str:
        return m.group(1) + RENDER[m.group("name")]() + m.group(4)

    return BLOCK.sub(sub, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the benchmarks first (~2 h)")
    ap.add_argument("--scale", action="store_true",
                    help="with --run, also benchmarks/scale.py and cost.py (Fashion-MNIST)")
    ap.add_argument("--check", action="store_true", help="exit 1 if README is not up to date")
    ap.add_argument("--only", choices=sorted([*(k for k, v in COMMANDS.items()
                                                 if "DEMO" not in v), "demo"]),
                    help="run and record one benchmark (demo: `forget demo` and the latency)")
    args = ap.parse_args(argv)
    if args.run:
        run_all(args.scale)
    if args.only == "demo":
        record_demo()
    elif args.only:
        record(args.only, COMMANDS[args.only].split()[1:])
    stale = []
    for page in pages():
        text = page.read_text()
        new = rendered(text)
        if new == text:
            continue
        if args.check:
            stale.append(str(page.relative_to(REPO)))
        else:
            page.write_text(new)
    if stale:
        print(f"figures of {', '.join(stale)} differ from benchmarks/results: run "
              "`python benchmarks/readme_figures.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
