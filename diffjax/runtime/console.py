"""Progress on long phases (sampling, Inception features, likelihoods, training) for people.

Where a bar renders (a notebook, or a terminal on stderr) it is a tqdm bar. In a log file a bar's
carriage returns would be raw escape codes, so there the same calls write an occasional plain log
line instead: at most one per `LOG_EVERY_S` seconds, and one at the end with the rate.
"""

from __future__ import annotations

import logging
import sys
import time

LOG_EVERY_S = 30.0


def interactive() -> bool:
    """True in a Jupyter kernel or when stderr is a terminal."""
    return "ipykernel" in sys.modules or sys.stderr.isatty()


class LogProgress:
    """tqdm's update/close interface, as occasional log lines."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self._start = self._last_log = time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.perf_counter()
        if now - self._last_log >= LOG_EVERY_S and self.n < self.total:
            self._last_log = now
            logging.info("%s: %d/%d %s (%.1f %s/s)", self.desc, self.n, self.total, self.unit,
                         self._rate(now), self.unit)

    def _rate(self, now: float) -> float:
        return (self.n - self._start_n) / max(now - self._start, 1e-9)

    def close(self) -> None:
        if self.n > self._start_n:
            now = time.perf_counter()
            logging.info("%s: %d/%d %s in %.1fs (%.1f %s/s)", self.desc, self.n, self.total,
                         self.unit, now - self._start, self._rate(now), self.unit)


class _Silent:
    n = 0

    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, *, unit: str = "img", initial: int = 0,
                 enabled: bool = True):
    """A tqdm bar, log lines, or nothing (`enabled=False`, e.g. on processes other than 0)."""
    if not enabled:
        return _Silent()
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial)
