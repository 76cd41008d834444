"""pytest plugin of ``suite_cpu.py``: each test's CPU-seconds in its pytest process (itself,
and the children it waited for), its wall time and whether it failed, one line per test in a
file per xdist worker under ``SUITE_CPU_DIR``."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest


def _cpu() -> tuple[float, float]:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


_FAILED: set[str] = set()


def pytest_runtest_logreport(report) -> None:
    if report.failed:
        _FAILED.add(report.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001 (pytest passes it by name)
    own0, kids0 = _cpu()
    t0 = time.monotonic()
    yield
    own1, kids1 = _cpu()
    folder = Path(os.environ["SUITE_CPU_DIR"])
    with open(folder / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.tsv", "a") as f:
        f.write(f"{item.nodeid}\t{own1 - own0:.2f}\t{kids1 - kids0:.2f}\t"
                f"{time.monotonic() - t0:.2f}\t{int(item.nodeid in _FAILED)}\n")
