"""Progress of long loops: a tqdm bar on a terminal, log lines everywhere else.

tqdm hides itself when stderr is not a terminal (a CI log, a Prefect worker, ``forget pretrain
> log``): a 30-minute pretraining then printed nothing. Off a terminal each epoch's figures go
to the ``forgetting`` logger instead, at most one line per ``every_s`` seconds (and always the
first and last epoch), which the CLI prints and Prefect forwards to the flow run's logs.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("forgetting")


class _LogLines:
    """The part of tqdm's interface the training loops use, as log lines."""

    def __init__(self, total: int, desc: str, every_s: float):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.i, self.last = 0, -float("inf")
        self.t0 = time.perf_counter()

    def __iter__(self):
        for i in range(self.total):
            self.i = i
            yield i

    def set_postfix(self, **figures) -> None:
        now = time.perf_counter()
        if self.i in (0, self.total - 1) or now - self.last >= self.every_s:
            self.last = now
            shown = " ".join(f"{k} {v}" for k, v in figures.items())
            log.info(f"{self.desc} epoch {self.i + 1}/{self.total} ({now - self.t0:.0f} s): "
                     f"{shown}")

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, every_s: float = 10.0):
    """An iterable over ``range(total)`` with ``set_postfix`` and ``close``."""
    if enabled and sys.stderr.isatty():
        return tqdm(range(total), desc=desc, leave=False)
    if enabled:
        return _LogLines(total, desc, every_s)
    return tqdm(range(total), disable=True)
