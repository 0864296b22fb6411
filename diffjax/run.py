"""Modes of `python -m diffjax.main`, by name. Each takes (config, workdir) and returns a summary."""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax

from diffjax import runtime
from diffjax.parallel import distributed


def _train(config, workdir: str) -> dict[str, Any]:
    from diffjax.training.loop import train

    return train(config, workdir)


MODES: dict[str, Callable[[Any, str], Any]] = {
    "train": _train,
}


def run(config, workdir: str, mode: str = "train") -> Any:
    """Initialises multi-host JAX when needed, then runs one mode."""
    if mode not in MODES:
        raise ValueError(f"Unknown --mode={mode!r}; choose one of {sorted(MODES)}.")
    runtime.quiet_library_logs()
    runtime.enable_compilation_cache()
    distributed.initialize_from_environment()
    if jax.process_index() == 0:
        logging.info("JAX %s: %d processes, %d devices (%s).", jax.__version__,
                     jax.process_count(), jax.device_count(), jax.devices()[0].device_kind)
    return MODES[mode](config, workdir)
