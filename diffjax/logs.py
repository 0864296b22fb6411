"""What a diffjax log shows: diffjax's own lines, and libraries only when something is wrong.

- Library INFO lines (Orbax and TFDS log every file operation) are dropped.
- Library warnings that describe no problem of the user's are dropped (TFDS's "OpenCV is not
  installed": decoding 32x32 PNGs with PIL is not a bottleneck worth a dependency).
- Library errors keep their first line but lose their traceback: a failed asynchronous Orbax
  save logs hundreds of lines from its worker thread, and diffjax reports the failure itself in
  one line (`CheckpointSaveError`). DIFFJAX_TRACEBACK=1 keeps everything.
- TensorFlow's C++ start-up banners are silenced by TF_CPP_MIN_LOG_LEVEL, which must be set
  before TensorFlow loads; `diffjax.main` does that first thing.
"""

from __future__ import annotations

import logging
import os

_NOISY_LIBRARIES = ("orbax", "tensorflow_datasets", "etils", "jax/_src", "absl/logging",
                    "tensorstore", "grain")
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
