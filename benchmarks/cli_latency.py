"""How long the everyday commands take, end to end, as a user types them.

    python benchmarks/cli_latency.py --root .forgetting/demo [--repeat 5] [--json]

Runs ``forget --help``, ``forget status``, ``forget request add`` (a different class each
time) and ``forget report`` in fresh processes, each ``--repeat`` times, and prints the median
and the spread in seconds. It works on a copy of the workspace (its queue is left as it was),
which needs a production model and a request with a report (``make demo`` makes one). Run it
on an idle machine: these are start-up costs, which load inflates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".forgetting/demo", help="a workspace (make demo)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    root = str(work / "ws")
    shutil.copytree(Path(args.root).resolve(), root, symlinks=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL",)}
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "-f", "local",
                    str(Path(root) / ".forgetting" / "dvc-remote")], cwd=root, env=env,
                   check=True, capture_output=True)
    forget = [sys.executable, "-m", "forgetting_cli"]
    st = json.loads(subprocess.run([*forget, "status", "--json", "--root", root], env=env,
                                   capture_output=True, text=True, check=True).stdout)
    reported = next(r["id"] for r in st["requests"] if r["status"] in ("done", "failed_gate"))
    gone = {c for r in st["requests"] if r["status"] != "cancelled" for c in r["classes"]}
    free = [f"digit_{i}" for i in range(9, -1, -1) if f"digit_{i}" not in gone]
    if len(free) <= args.repeat:
        ap.error(f"--repeat must be below {len(free)}: each request add queues another class")
    times: dict[str, list[float]] = {k: [] for k in ("--help", "status", "request add",
                                                     "report")}
    for i in range(args.repeat):
        for name, cmd in (("--help", [*forget, "--help"]),
                          ("status", [*forget, "status", "--root", root]),
                          ("request add", [*forget, "request", "add", free[i], "--reason",
                                           "latency benchmark", "--root", root]),
                          ("report", [*forget, "report", reported, "--out",
                                      str(work / f"report-{i}"), "--root", root])):
            s, res = timed(cmd, env)
            assert res.returncode == 0, (cmd, res.stderr[-2000:])
            times[name].append(s)
    shutil.rmtree(work)  # the copy this benchmark made
    result = {k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                  "max_s": round(max(v), 3)} for k, v in times.items()}
    print(f"{'command':<16}{'median s':>10}{'min':>8}{'max':>8}   ({args.repeat} runs each)")
    for k, v in result.items():
        print(f"{k:<16}{v['median_s']:>10.2f}{v['min_s']:>8.2f}{v['max_s']:>8.2f}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
