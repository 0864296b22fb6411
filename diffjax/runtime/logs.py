"""What a diffjax log shows: diffjax's own lines, and libraries only when something is wrong.

- Library INFO lines (Orbax and TFDS log every file operation) are dropped.
- Library warnings that describe no problem of the user's are dropped (TFDS's "OpenCV is not
  installed": decoding 32x32 PNGs with PIL is not a bottleneck worth a dependency).
- Library errors keep their first line but lose their traceback: a failed asynchronous Orbax
  save logs hundreds of lines from its worker thread, and diffjax reports the failure itself in
  one line (`CheckpointSaveError`). DIFFJAX_TRACEBACK=1 keeps everything.
- After a failed asynchronous save, TensorStore still completes the futures of the writes that
  were in flight; each completion tries to wake Orbax's event loop, which is already closed, and
  Python prints that "Event loop is closed" RuntimeError as an unraisable exception, once per
  chunk (hundreds). Those, and only those, are dropped; the save's failure is reported anyway.
- TensorFlow's C++ start-up banners are silenced by TF_CPP_MIN_LOG_LEVEL, which must be set
  before TensorFlow loads; `diffjax.main` does that first thing.
"""

from __future__ import annotations

import logging
import os
import sys

# asyncio: Orbax's failed writes also surface as "exception was never retrieved" from its loop.
_NOISY_LIBRARIES = ("orbax", "tensorflow_datasets", "etils", "jax/_src", "absl/logging",
                    "tensorstore", "grain", "asyncio/")
_HARMLESS_WARNINGS = ("OpenCV is not installed",)


class LibraryLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from_library = any(name in record.pathname for name in _NOISY_LIBRARIES)
        if not from_library:
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if any(text in message for text in _HARMLESS_WARNINGS):
            return False
        if record.exc_info and not os.environ.get("DIFFJAX_TRACEBACK"):
            record.msg, record.args = message.splitlines()[0] if message else "", ()
            record.exc_info, record.exc_text = None, None
        return True


def quiet_library_logs() -> None:
    """Keeps diffjax's INFO lines and the libraries' real problems (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loggers = [logging.getLogger(), logging.getLogger("absl")]
    for logger in loggers:
        for target in [logger, *logger.handlers]:
            if not any(isinstance(f, LibraryLogFilter) for f in target.filters):
                target.addFilter(LibraryLogFilter())
    if not getattr(sys.unraisablehook, "_diffjax", False):
        sys.unraisablehook = _drop_closed_loop_wakeups(sys.unraisablehook)


def _is_closed_loop_wakeup(unraisable) -> bool:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        return False
    frames = []
    trace = unraisable.exc_traceback
    while trace is not None:
        frames.append(trace.tb_frame.f_code.co_name)
        trace = trace.tb_next
    return "call_soon_threadsafe" in frames


def _drop_closed_loop_wakeups(previous):
    def hook(unraisable) -> None:
        if _is_closed_loop_wakeup(unraisable) and not os.environ.get("DIFFJAX_TRACEBACK"):
            return
        previous(unraisable)

    hook._diffjax = True
    return hook
