"""Modes of `python -m diffjax.main`, by name. Each takes (config, workdir) and returns a summary.

Each mode is imported only when it runs, so `--mode=sample` never loads the training loop.

Also here: preflight.py, the whole config checked before anything compiles (a dry run of the
modes, so it lives with them).
Imports: anything below (training, sampling, evaluation, convert, pipelines, experiment and the
foundations); only diffjax.main imports the modes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax

from diffjax.latents import latent_mode
from diffjax.modes import preflight
from diffjax.parallel import distributed, peers
from diffjax.runtime import logs, preemption, xla
from diffjax.storage import filesystem as fs, workdir as workdir_lib, workdir_lock


def _train(config, workdir: str) -> dict[str, Any]:
    from diffjax.training.loop import train

    return train(config, workdir)


def _train_autoencoder(config, workdir: str) -> dict[str, Any]:
    from diffjax.modes.first_stage import train_autoencoder

    return train_autoencoder(config, workdir)


def _encode_latents(config, workdir: str) -> dict[str, Any]:
    from diffjax.modes.encode_latents import encode_latents

    return encode_latents(config, workdir)


def _fid_stats(config, workdir: str) -> dict[str, Any]:
    from diffjax.evaluation.stats import fid_stats

    return fid_stats(config, workdir)


def _eval(config, workdir: str) -> dict[int, dict]:
    from diffjax.modes.evaluate import evaluate

    return evaluate(config, workdir)


def _sample(config, workdir: str) -> dict[str, Any]:
    from diffjax.modes.sample import sample

    return sample(config, workdir)


def _likelihood(config, workdir: str) -> dict[str, Any]:
    from diffjax.modes.likelihood import evaluate_likelihood

    return evaluate_likelihood(config, workdir)


def _compile(config, workdir: str) -> dict[str, Any]:
    from diffjax.modes.compile import compile_mode

    return compile_mode(config, workdir)


MODES: dict[str, Callable[[Any, str], Any]] = {
    "train": _train,
    "train_autoencoder": _train_autoencoder,
    "encode_latents": _encode_latents,
    "fid_stats": _fid_stats,
    "eval": _eval,
    "sample": _sample,
    "likelihood": _likelihood,
    "compile": _compile,
}


def _local_checkpoints(workdir: str) -> str | None:
    return fs.join(fs.absolute(workdir), "checkpoints") if fs.is_local(workdir) else None


# Modes that write checkpoints; the others only read a workdir and run beside training.
WRITING_MODES = ("train", "train_autoencoder")


def run(config, workdir: str, mode: str = "train") -> Any:
    """Initialises multi-host JAX when needed, validates the whole config, then runs one mode."""
    if mode not in MODES:
        raise ValueError(f"Unknown --mode={mode!r}; choose one of {sorted(MODES)}.")
    if mode not in WRITING_MODES:
        preemption.release()
    logs.quiet_library_logs()
    xla.enable_compilation_cache()
    distributed.initialize_from_environment()
    if jax.process_index() == 0:
        logging.info("JAX %s: %d processes, %d devices (%s).", jax.__version__,
                     jax.process_count(), jax.device_count(), jax.devices()[0].device_kind)
    writes = mode in WRITING_MODES
    if writes:
        # Before the (seconds-long) validation, so that a second writer is refused at once.
        if jax.process_index() == 0:
            workdir_lib.check_writable(fs.absolute(workdir))
        workdir_lock.lock_for_job(workdir)
    peers.start_watchdog(_local_checkpoints(workdir))
    # Relative latent paths (data.latent_dir, autoencoder.pretrained) are inside the workdir.
    config = latent_mode.resolve_paths(config, workdir)
    try:
        preflight.validate(config, mode)
        result = MODES[mode](config, workdir)
        peers.stop_watchdog()
        return result
    except Exception as error:
        peers.exit_if_lost(error, _local_checkpoints(workdir))
        raise
    finally:
        if writes:
            workdir_lock.release_job_lock(workdir)
