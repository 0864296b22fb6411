"""Process-wide runtime settings that entry points (CLI, tests, notebooks) opt into explicitly.

- A persistent XLA compilation cache: compiling a U-Net train step takes tens of seconds on a CPU
  and is identical across runs of the same config, so reruns, resumes and tests reuse it.
- Quieter logs: Orbax and TFDS log every file operation at INFO, burying the training log.
"""

from __future__ import annotations

import logging
import os

import jax

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "xla")
_NOISY_LIBRARIES = ("orbax", "tensorflow_datasets", "etils", "jax/_src", "absl/logging")


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
    """Turns on the persistent cache (DIFFJAX_COMPILATION_CACHE=off disables it)."""
    cache_dir = cache_dir or os.environ.get("DIFFJAX_COMPILATION_CACHE", DEFAULT_CACHE_DIR)
    if cache_dir == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


class _DropLibraryInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(name in record.pathname for name in _NOISY_LIBRARIES)


def quiet_library_logs() -> None:
    """Keeps diffjax's INFO lines and everything at WARNING or above from libraries."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_DropLibraryInfo())
    logging.getLogger("absl").addFilter(_DropLibraryInfo())
