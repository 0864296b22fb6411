"""Training progress for people: one log line per log interval, and a live bar where one shows.

The numbers come from the loop's own metrics (the same dict that goes to TensorBoard), so the
console and TensorBoard never disagree. A tqdm bar is drawn only where it renders: a notebook, or
a terminal on stderr; in a log file its carriage returns would be raw escape codes.
"""

from __future__ import annotations

import logging
import time

from diffjax.runtime.console import interactive


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    def __init__(self, total_steps: int, start_step: int, *, enabled: bool = True):
        self.total = int(total_steps)
        self.start_step = int(start_step)
        self.enabled = enabled
        self._start_time = time.perf_counter()
        self._bar = None
        if enabled and interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.start_step, unit="step",
                             desc="train", dynamic_ncols=True)

    def update(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        rate = scalars.get("steps_per_sec")
        eta = format_duration((self.total - step) / rate) if rate else "?"
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}",
                                  refresh=False)
            return
        parts = [f"step {step}/{self.total} ({100.0 * step / self.total:.0f}%)",
                 f"loss {scalars.get('loss', float('nan')):.4g}"]
        if rate:
            parts.append(f"{rate:.2f} steps/s, {scalars.get('examples_per_sec', 0):.0f} "
                         f"examples/s")
        if "mfu" in scalars:
            parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
        parts.append(f"lr {scalars.get('lr', float('nan')):.3g}")
        parts.append(f"ETA {eta}")
        logging.info("%s", " | ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
