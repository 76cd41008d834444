"""Where the test suite's CPU goes: `make test`'s pytest run, with every process it starts
sampled, and each test module's own CPU.

    python benchmarks/suite_cpu.py [--json] [-- PYTEST ARGS]

On 2 cores the suite is CPU-bound (the machine stays 97-98 % busy), so `make test`'s time is
at least its CPU-seconds over 2, whatever the scheduling: this says which tests and which kinds
of process own those seconds. Three views of one run:

- the machine's busy CPU-seconds over the run (``/proc/stat``: everything, the floor);
- every process started during the run, sampled each second with psutil and grouped by kind
  (flow-run processes of the stack tests' workers, Prefect and MLflow servers, PostgreSQL, the
  tests' fork server and the ``forget`` commands forked from it, ...); a process that lives
  under a second, or its last second, is missed, so the sum is below the machine's;
- each test module's CPU in its pytest process, itself and the children it waited for (a
  plugin, ``suite_cpu_plugin.py``; servers and fork-server processes are not its children).

Runs the suite as `make test` does (four processes): about 7 min here (Intel Xeon, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
# the Makefile's test target's arguments (keep them equal)
MAKE_TEST = ["-q", "-n", "4", "--dist", "loadfile", "--no-loadscope-reorder"]

# (kind, pattern on the command line), first match wins
KINDS = [
    # (the tests' commands come from a flow-run server too: its preload names them)
    ("fork server and the forget commands forked from it",
     r"tests\.forkserver_preload|flow_runs --module forgetting_cli"),
    ("flow runs (stack workers' Prefect processes, their flow-run servers)",
     r"prefect\.runner\._workspace_supervisor|prefect\.engine|forgetting_cli\.flow_runs"),
    ("Prefect servers", r"prefect\.server\.api\.server|prefect server"),
    ("MLflow servers; spawned children (uvicorn workers, Dask's)",
     r"mlflow server|multiprocessing\.spawn|mlflow\.server"),
    ("MLflow model servers (mlflow models serve)", r"scoring_server"),
    ("stack workers (forget worker)", r"forgetting_cli worker"),
    ("PostgreSQL", r"postgres"),
    ("S3 (weed), git (gunicorn), TLS fronts", r"weed|gunicorn|forgetting_stack\.tls_front"),
    ("dvc", r"\bdvc\b"),
    ("git", r"(^|/)git[ -]"),
    ("pytest processes (tests in-process)", r"pytest|execnet|import sys;exec\(eval"),
    ("forget commands in fresh interpreters", r"forgetting_cli|benchmarks/gpu_check"),
]


def _busy() -> float:
    """The machine's busy CPU-seconds since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _shown(cmd: str, words: int = 6) -> str:
    """A command line's first words, temporary paths and URLs left out."""
    kept = [w for w in cmd.split()[:words] if "://" not in w and not w.startswith("/tmp/")]
    return " ".join(kept)


def _kind(cmd: str) -> str:
    return next((k for k, pat in KINDS if re.search(pat, cmd)), "other")


class Sampler(threading.Thread):
    """Each process started after it was made: its command line and its CPU-seconds at the
    last look. (Those running before are known by pid and start time, not by comparing start
    times with the clock: psutil's are counted from a boot time rounded to the second.)"""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.before = {(p.pid, p.info["create_time"])
                       for p in psutil.process_iter(["create_time"])}
        self.seen: dict[tuple[int, float], list] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for p in psutil.process_iter(["pid", "create_time", "cmdline", "cpu_times"]):
                i = p.info
                key = (i["pid"], i["create_time"])
                if key in self.before or not i["cpu_times"]:
                    continue
                cpu = i["cpu_times"].user + i["cpu_times"].system
                if key in self.seen:
                    self.seen[key][1] = cpu
                else:
                    self.seen[key] = [" ".join(i["cmdline"] or []), cpu]  # (kinds read it all)
            self.stop.wait(self.every)


def _modules(folder: Path, failed: list[str]) -> dict[str, dict]:
    """Per test module, and the tests that failed into ``failed``."""
    mods: dict[str, dict] = defaultdict(lambda: {"self": 0.0, "children": 0.0, "wall": 0.0,
                                                 "tests": 0})
    for f in folder.glob("*.tsv"):
        for line in f.read_text().splitlines():
            node, own, kids, wall, bad = line.split("\t")
            if bad == "1":
                failed.append(node)
            m = mods[node.split("::")[0]]
            m["self"] += float(own)
            m["children"] += float(kids)
            m["wall"] += float(wall)
            m["tests"] += 1
    return {k: {**v, "self": round(v["self"], 1), "children": round(v["children"], 1),
                "wall": round(v["wall"], 1)}
            for k, v in sorted(mods.items(), key=lambda kv: -(kv[1]["self"] + kv[1]["children"]))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("pytest_args", nargs="*", help=f"after --; default: {' '.join(MAKE_TEST)}")
    args = ap.parse_args(argv)
    per_test = Path(tempfile.mkdtemp(prefix="suite-cpu-"))
    env = {**os.environ, "SUITE_CPU_DIR": str(per_test),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH")]))}
    sampler = Sampler()
    sampler.start()
    busy0, t0 = _busy(), time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "pytest", *(args.pytest_args or MAKE_TEST),
                         "-p", "suite_cpu_plugin"], cwd=REPO, env=env).returncode
    wall, busy = time.monotonic() - t0, _busy() - busy0
    sampler.stop.set()
    sampler.join()
    kinds: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for cmd, cpu in sampler.seen.values():
        kinds[_kind(cmd)][0] += cpu
        kinds[_kind(cmd)][1] += 1
    failed: list[str] = []
    modules = _modules(per_test, failed)
    for f in per_test.glob("*.tsv"):
        f.unlink()
    per_test.rmdir()  # the folder it made
    result = {
        "pytest_args": args.pytest_args or MAKE_TEST, "returncode": rc, "failed": sorted(failed),
        "wall_s": round(wall, 1),
        "busy_cpu_s": round(busy, 1), "cores": os.cpu_count(),
        "busy_share": round(busy / (wall * os.cpu_count()), 3),
        "sampled_cpu_s": round(sum(c for c, _ in kinds.values()), 1),
        "kinds": {k: {"cpu_s": round(c, 1), "processes": n}
                  for k, (c, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])},
        "modules": modules,
        # the largest processes, their command lines cut before any argument that may hold a
        # secret (the stack's servers take database URLs with passwords)
        "largest": [{"cpu_s": round(cpu, 1), "kind": _kind(cmd), "command": _shown(cmd)}
                    for cmd, cpu in sorted(sampler.seen.values(), key=lambda v: -v[1])[:25]],
    }
    print(f"{wall:.0f} s wall, {busy:.0f} busy CPU-s on {os.cpu_count()} cores "
          f"({100 * result['busy_share']:.0f} %); sampled processes {result['sampled_cpu_s']:.0f} "
          "CPU-s")
    for k, v in result["kinds"].items():
        print(f"  {v['cpu_s']:7.1f} CPU-s  {v['processes']:4d} processes  {k}")
    print("per module, in its pytest process (self + children it waited for):")
    for k, v in modules.items():
        print(f"  {v['self'] + v['children']:7.1f} CPU-s ({v['self']:.1f} + {v['children']:.1f}), "
              f"{v['wall']:6.1f} s wall, {v['tests']:3d} tests  {k}")
    if failed:
        print("failed: " + ", ".join(sorted(failed)))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
