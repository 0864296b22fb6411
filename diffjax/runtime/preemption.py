"""SIGTERM (preemption) handling, from process start to the last training step.

`python -m diffjax.main` calls `install()` before it imports anything heavy, so a SIGTERM that
arrives during start-up (imports, jax.distributed, restoring, compiling) is remembered instead of
killing the process with -15. Training polls `PreemptionWatcher.should_stop` after every step and
saves at the step it reached; a request that came before the first step stops training before
that step, with nothing to save (the newest checkpoint already holds that state).

Python runs signal handlers between bytecodes, so a SIGTERM during a long C++ call (XLA compiling
the train step, a synchronous checkpoint write) is acted on when that call returns: the worst-case
latency is the rest of the compilation plus one step. Preemption notices (TPU: 30 s, GCE spot:
30 s) cover a step and a save, not a cold compilation of a large model; the persistent compilation
cache makes restarts after the first warm.

Modes that only read (sample, eval, likelihood, fid_stats) call `release()`: they get the default
SIGTERM behaviour back (their outputs are written atomically, and eval resumes from its chunks).
"""

from __future__ import annotations

import logging
import signal
import sys

# Nothing heavy at import time: `diffjax.main` installs the handler before JAX or TensorFlow load.

EXIT_TERMINATED = 128 + signal.SIGTERM

_state = {"requested": False, "installed": False, "previous": None}


def _on_signal(signum, frame) -> None:
    del signum, frame
    if not _state["requested"]:
        logging.warning("SIGTERM received: training stops at the next step boundary and saves.")
    _state["requested"] = True


def install() -> None:
    """Remembers SIGTERM instead of dying on it (idempotent)."""
    if _state["installed"]:
        return
    _state["previous"] = signal.signal(signal.SIGTERM, _on_signal)
    _state["installed"] = True


def uninstall() -> None:
    """Puts back the handler that was there before `install()`."""
    if _state["installed"]:
        signal.signal(signal.SIGTERM, _state["previous"] or signal.SIG_DFL)
        _state["installed"] = False


def requested() -> bool:
    return _state["requested"]


def release() -> None:
    """For modes without a stopping point of their own: default SIGTERM from now on, and exit
    now if one already arrived during start-up."""
    uninstall()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _state["requested"]:
        sys.stderr.write("diffjax: SIGTERM received during start-up; exiting.\n")
        sys.exit(EXIT_TERMINATED)


class PreemptionWatcher:
    """The training loop's view: every host must agree on the step at which to stop.

    Installs the handler if the process has none yet (a notebook calling `train()`), and puts the
    previous one back when training ends.
    """

    def __init__(self, check_every: int):
        self.check_every = max(1, int(check_every))
        self._owns_handler = not _state["installed"]
        install()

    @property
    def requested(self) -> bool:
        return requested()

    def should_stop(self, step: int, checkpointer) -> bool:
        if step % self.check_every and _process_count() > 1:
            return False
        return _any_process(requested()) or checkpointer.reached_preemption(step)

    def stop_before_first_step(self) -> bool:
        """True (on every host) when a SIGTERM came during start-up."""
        return _any_process(requested())

    def restore(self) -> None:
        if self._owns_handler:
            uninstall()


def _process_count() -> int:
    import jax

    return jax.process_count()


def _any_process(flag: bool) -> bool:
    if _process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
